/**
 * Adds our functions to the `tf` namespace objects users hold: the CommonJS exports of
 * @tensorflow/tfjs and @tensorflow/tfjs-core are extensible (an ESM namespace is not: ESM users
 * import the names from this package), and in a browser the <script> global `tf`.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyObject = Record<string, any>;

function tfObjects(): AnyObject[] {
  const found: AnyObject[] = [];
  const g = globalThis as AnyObject;
  if (g.tf && typeof g.tf === 'object') found.push(g.tf);
  for (const name of ['@tensorflow/tfjs', '@tensorflow/tfjs-core']) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      found.push(typeof require === 'function' ? require(name) : undefined);
    } catch { /* not installed: nothing to extend */ }
  }
  return found.filter(o => o && typeof o === 'object' && Object.isExtensible(o));
}

/** Sets each name on every reachable tf object (and on `tf.layers` for the `layers` key). */
export function attachToTf(members: AnyObject, sub?: 'layers'): void {
  for (const tf of tfObjects()) {
    const target = sub ? tf[sub] : tf;
    if (!target || typeof target !== 'object' || !Object.isExtensible(target)) continue;
    for (const [k, v] of Object.entries(members)) {
      if (target[k] === undefined) {
        try { target[k] = v; } catch { /* frozen by a bundler: skip */ }
      }
    }
  }
}
