/**
 * Adds our functions to the `tf` namespace objects users hold: the CommonJS exports of
 * @tensorflow/tfjs-core and tfjs-layers' `layers` namespace are extensible (an ESM namespace is
 * not: ESM users import the names from this package), and in a browser the <script> global `tf`.
 *
 * Nothing is ever required here by a computed name: in a bundle such a require() is left to Node
 * at run time and loads a second copy of tfjs from disk (its kernels collide with the bundled
 * ones: "kernel already registered"), attached to instead of the copy the user holds.
 */
import * as tfc from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyObject = Record<string, any>;

/** The union package @tensorflow/tfjs where it was loaded before us (it is never loaded here). */
function loadedTfjsUnion(): AnyObject[] {
  const cache = typeof require === 'function' ? (require as { cache?: Record<string, { exports?: unknown }> }).cache : undefined;
  if (!cache || typeof cache !== 'object') return [];
  return Object.keys(cache)
      .filter(id => /[\\/]@tensorflow[\\/]tfjs[\\/]dist[\\/][^\\/]+\.js$/.test(id))
      .map(id => cache[id]?.exports as AnyObject);
}

function tfObjects(sub?: 'layers'): AnyObject[] {
  const g = globalThis as AnyObject;
  const found: AnyObject[] = [g.tf, ...loadedTfjsUnion()];
  // When @tensorflow/tfjs loads after us it copies tfjs-core's keys, ours included, and exposes
  // tfjs-layers' own `layers` object: extending those two covers either import order.
  if (sub === 'layers') found.push({ layers: tfl.layers });
  else found.push(tfc as AnyObject);
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
