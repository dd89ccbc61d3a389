/** A small --flag=value / --flag value / --switch parser for the example scripts. */
export type Flags = Record<string, string | boolean>;

/** The flags and their defaults, one a line: what --help prints and a bad flag is answered with. */
export function usage(defaults: Flags): string {
  const width = Math.max(...Object.keys(defaults).map(k => k.length)) + 2;
  const lines = Object.entries(defaults).map(([name, value]) =>
      `  --${name.padEnd(width)}${typeof value === 'boolean' ? '(switch)' : `default ${value}`}`);
  return ['flags (--name=value or --name value):', ...lines, `  --${'help'.padEnd(width)}print this and exit`].join('\n');
}

/** Thrown for a flag the script does not know; parseFlags answers it with the usage. */
class UsageError extends Error {}

function parse(argv: string[], defaults: Flags): Flags {
  const flags: Flags = { ...defaults };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--')) throw new UsageError(`unexpected argument ${arg}: flags look like --name=value`);
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    if (!(name in defaults)) throw new UsageError(`unknown flag --${name}`);
    if (eq >= 0) flags[name] = arg.slice(eq + 1);
    else if (typeof defaults[name] === 'boolean') flags[name] = true;
    else if (i + 1 < argv.length) flags[name] = argv[++i];
    else throw new UsageError(`--${name} needs a value`);
  }
  return flags;
}

/**
 * Parses argv against the known flags. `--help` (or `-h`) prints the usage and exits 0; a flag
 * that is not known prints the error and the usage, without a stack trace, and exits 2.
 */
export function parseFlags(argv: string[], defaults: Flags): Flags {
  if (argv.includes('--help') || argv.includes('-h')) {
    console.log(usage(defaults));
    process.exit(0);
  }
  try {
    return parse(argv, defaults);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`error: ${e.message}\n${usage(defaults)}`);
    process.exit(2);
  }
}

export function intFlag(flags: Flags, name: string): number {
  const value = Number(flags[name]);
  if (!Number.isInteger(value) || value < 0) throw new Error(`--${name} must be a non-negative integer, got ${flags[name]}`);
  return value;
}

export function numberFlag(flags: Flags, name: string): number {
  const value = Number(flags[name]);
  if (!Number.isFinite(value)) throw new Error(`--${name} must be a number, got ${flags[name]}`);
  return value;
}

/** A comma-separated subset of `allowed`, e.g. `--attention=flash,stock`. */
export function choicesFlag<T extends string>(flags: Flags, name: string, allowed: readonly T[]): T[] {
  return String(flags[name]).split(',').map(s => {
    const choice = s as T;
    if (!allowed.includes(choice)) throw new Error(`--${name} takes ${allowed.join(' and/or ')}, got ${s}`);
    return choice;
  });
}
