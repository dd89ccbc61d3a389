/** A small --flag=value / --flag value / --switch parser for the example scripts. */
export type Flags = Record<string, string | boolean>;

export function parseFlags(argv: string[], defaults: Flags): Flags {
  const flags: Flags = { ...defaults };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--')) throw new Error(`unexpected argument ${arg}: flags look like --name=value`);
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    if (!(name in defaults)) {
      throw new Error(`unknown flag --${name}; known: ${Object.keys(defaults).map(k => `--${k}`).join(' ')}`);
    }
    if (eq >= 0) flags[name] = arg.slice(eq + 1);
    else if (typeof defaults[name] === 'boolean') flags[name] = true;
    else flags[name] = argv[++i];
  }
  return flags;
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
