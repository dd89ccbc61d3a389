/**
 * Adds our functions to the `tf` namespace objects users hold: the CommonJS exports of
 * @tensorflow/tfjs-core and tfjs-layers' `layers` namespace are extensible (an ESM namespace is
 * not: ESM users import the names from this package), and in a browser the <script> global `tf`.
 *
 * Nothing is ever required here by a computed name: in a bundle such a require() is left to Node
 * at run time and loads a second copy of tfjs from disk (its kernels collide with the bundled
 * ones: "kernel already registered"), attached to instead of the copy the user holds.
 */
import * as tfl from '@tensorflow/tfjs-layers';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyObject = Record<string, any>;

/** The entry files of @tensorflow/tfjs-core and the union @tensorflow/tfjs under Node. */
const TF_NODE_ENTRY = /[\\/]@tensorflow[\\/]tfjs(-core)?[\\/]dist[\\/]tf(-core)?\.node\.js$/;

/**
 * The exports objects of tfjs-core and tfjs already loaded by Node (never loaded here). Only the
 * module cache has them: an `import *` of a module without __esModule, as tfjs-core's CommonJS
 * build is, gives a copy.
 */
function loadedTfModules(): AnyObject[] {
  const cache = typeof require === 'function' ? (require as { cache?: Record<string, { exports?: unknown }> }).cache : undefined;
  if (!cache || typeof cache !== 'object') return [];
  return Object.keys(cache).filter(id => TF_NODE_ENTRY.test(id)).map(id => cache[id]?.exports as AnyObject);
}

function tfObjects(sub?: 'layers'): AnyObject[] {
  // tfjs-core is always loaded by now (we import it). When @tensorflow/tfjs loads after us it
  // copies tfjs-core's keys, ours included, and exposes tfjs-layers' own `layers` object: so
  // extending those covers either import order.
  const found: AnyObject[] = [(globalThis as AnyObject).tf, ...loadedTfModules()];
  if (sub === 'layers') found.push({ layers: tfl.layers });
  return found.filter(o => o && typeof o === 'object');
}

/** Sets each name on every reachable tf object (and on `tf.layers` for the `layers` key). */
export function attachToTf(members: AnyObject, sub?: 'layers'): void {
  for (const tf of tfObjects(sub)) {
    const target = sub ? tf[sub] : tf;
    if (!target || typeof target !== 'object' || !Object.isExtensible(target)) continue;
    for (const [k, v] of Object.entries(members)) {
      if (target[k] === undefined) {
        try { target[k] = v; } catch { /* frozen by a bundler: skip */ }
      }
    }
  }
}
