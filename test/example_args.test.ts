/**
 * The training example's command line (examples/transformer/args.ts), run as users run it:
 * `--help` prints the flags and exits 0; a flag it does not know is answered with the flags, not
 * a stack trace.
 */
import { spawnSync } from 'child_process';
import * as path from 'path';

const ROOT = path.resolve(__dirname, '..');

function example(script: string, ...args: string[]) {
  return spawnSync(process.execPath, ['examples/run.js', `examples/transformer/${script}`, ...args],
                   { cwd: ROOT, encoding: 'utf8', timeout: 60000 });
}

describe.each(['train.ts', 'compare.ts', 'profile_step.ts', 'generate_bench.ts'])('examples/transformer/%s', script => {
  test('--help prints every flag with its default and exits 0', () => {
    const r = example(script, '--help');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    for (const flag of ['--backend', '--seed', '--help']) expect(r.stdout).toContain(flag);
    expect(r.stdout).toMatch(/--backend\s+default auto/);
  });

  test('an unknown flag names it, lists the flags, and exits 2 without a stack trace', () => {
    const r = example(script, '--useCasualMask');
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/^error: unknown flag --useCasualMask\nflags/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});
