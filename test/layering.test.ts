/**
 * The layers depend one way: API (src/, gradients/) -> kernels (kernels/<backend>/) -> contract (src/contract/).
 * A kernel file may reach (through its relative imports, followed transitively, tools' test
 * helpers included) only its own backend's files and the contract; the contract imports nothing
 * of the package. Checked on the import statements of every .ts file.
 */
import * as fs from 'fs';
import * as path from 'path';

const ROOT = path.resolve(__dirname, '..');

/** Module specifiers of a TypeScript source: import/export ... from, bare import, import(), require(). */
export function importSpecifiers(source: string): string[] {
  const code = source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');
  const specs: string[] = [];
  const patterns = [
    /\b(?:import|export)\s[^'";]*?\bfrom\s*['"]([^'"]+)['"]/g,
    /\bimport\s*['"]([^'"]+)['"]/g,
    /\b(?:import|require)\s*\(\s*['"]([^'"]+)['"]\s*\)/g,
  ];
  for (const re of patterns) for (const m of code.matchAll(re)) specs.push(m[1]);
  return specs;
}

/** Resolves a relative specifier to a repository-relative .ts path; null for packages. */
function resolveRelative(fromFile: string, spec: string, exists: (rel: string) => boolean): string | null {
  if (!spec.startsWith('.')) return null;
  const base = path.posix.normalize(path.posix.join(path.posix.dirname(fromFile), spec));
  for (const candidate of [base, `${base}.ts`, `${base}/index.ts`]) {
    if (candidate.endsWith('.ts') && exists(candidate)) return candidate;
  }
  return `${base} (unresolved)`;
}

export interface SourceTree {
  files: string[];
  read(rel: string): string;
}

const inPackage = (f: string) => f.startsWith('src/') || f.startsWith('kernels/') || f.startsWith('gradients/');
const backendOf = (f: string) => f.split('/').slice(0, 2).join('/') + '/';

/** Every layering violation of the tree, as "file -> ... -> offending file" chains. */
export function layeringViolations(tree: SourceTree): string[] {
  const known = new Set(tree.files);
  const importsOf = new Map<string, string[]>();
  const imports = (f: string): string[] => {
    if (!importsOf.has(f)) {
      const resolved = known.has(f)
        ? importSpecifiers(tree.read(f)).map(s => resolveRelative(f, s, r => known.has(r))).filter((r): r is string => r !== null)
        : [];
      importsOf.set(f, resolved);
    }
    return importsOf.get(f)!;
  };
  const violations: string[] = [];
  for (const file of tree.files) {
    if (file.startsWith('src/contract/')) {
      for (const dep of imports(file)) {
        if (!dep.startsWith('src/contract/')) violations.push(`${file} -> ${dep} (the contract imports nothing of the package)`);
      }
    } else if (file.startsWith('kernels/')) {
      const own = backendOf(file);
      const allowed = (f: string) => f.startsWith(own) || f.startsWith('src/contract/') || !inPackage(f);
      // Breadth-first over relative imports, remembering how each file was reached.
      const via = new Map<string, string>([[file, '']]);
      const queue = [file];
      while (queue.length) {
        const f = queue.shift()!;
        for (const dep of imports(f)) {
          if (via.has(dep)) continue;
          via.set(dep, f);
          if (!allowed(dep) || dep.endsWith('(unresolved)')) {
            const chain = [dep];
            for (let g = f; g; g = via.get(g)!) chain.unshift(g);
            violations.push(`${chain.join(' -> ')} (kernels import only their own backend and src/contract)`);
          } else if (!dep.startsWith('src/contract/')) {
            queue.push(dep);
          }
        }
      }
    }
  }
  return violations;
}

function repositoryTree(): SourceTree {
  const files: string[] = [];
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
      const rel = path.posix.join(dir, e.name);
      if (e.isDirectory()) walk(rel);
      else if (e.name.endsWith('.ts')) files.push(rel);
    }
  };
  for (const top of ['src', 'kernels', 'gradients', 'test', 'bench', 'examples']) {
    if (fs.existsSync(path.join(ROOT, top))) walk(top);
  }
  return { files, read: rel => fs.readFileSync(path.join(ROOT, rel), 'utf8') };
}

const fakeTree = (sources: Record<string, string>): SourceTree =>
  ({ files: Object.keys(sources), read: rel => sources[rel] });

describe('layering: api -> kernels -> contract', () => {
  it('holds for every .ts file of the repository', () => {
    const tree = repositoryTree();
    expect(tree.files.filter(f => f.startsWith('kernels/')).length).toBeGreaterThan(10);
    expect(tree.files.filter(f => f.startsWith('src/contract/')).length).toBeGreaterThanOrEqual(5);
    expect(layeringViolations(tree)).toEqual([]);
  });

  it('reads every form of import statement', () => {
    expect(importSpecifiers(`
      import { a } from './a';
      import type { B } from "../b";
      export { c } from './c';
      export * from './d';
      import './e';
      const f = await import('./f');
      const g = require('./g');
      // import { h } from './commented-out';
      /* import { i } from './also-commented-out'; */
      const s = 'http://example.com';
    `)).toEqual(['./a', '../b', './c', './d', './e', './f', './g']);
  });

  it('flags a kernel importing the API, another backend, or the API through a helper', () => {
    const violations = layeringViolations(fakeTree({
      'src/index.ts': '',
      'src/contract/index.ts': "export * from './names';",
      'src/contract/names.ts': '',
      'kernels/cpu/ok.ts': "import { x } from '../../src/contract'; import { y } from './own';",
      'kernels/cpu/own.ts': '',
      'kernels/cpu/bad_api.ts': "import { flashAttention } from '../../src/index';",
      'kernels/webgpu/bad_backend.ts': "import { y } from '../cpu/own';",
      'kernels/webgpu/tune/bad_tool.ts': "import('../../../test/helpers/case');",
      'test/helpers/case.ts': "import { flashAttention } from '../../src/index';",
    }));
    expect(violations).toEqual([
      'kernels/cpu/bad_api.ts -> src/index.ts (kernels import only their own backend and src/contract)',
      'kernels/webgpu/bad_backend.ts -> kernels/cpu/own.ts (kernels import only their own backend and src/contract)',
      'kernels/webgpu/tune/bad_tool.ts -> test/helpers/case.ts -> src/index.ts (kernels import only their own backend and src/contract)',
    ]);
  });

  it('flags a contract file importing anything of the package', () => {
    expect(layeringViolations(fakeTree({
      'src/contract/options.ts': "import { Tensor } from '@tensorflow/tfjs-core'; import { k } from '../../kernels/cpu/k';",
      'kernels/cpu/k.ts': '',
    }))).toEqual(['src/contract/options.ts -> kernels/cpu/k.ts (the contract imports nothing of the package)']);
  });
});
