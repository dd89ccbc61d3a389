/**
 * The WGSL side of the contract's uniform table (src/contract/problem.ts): the struct fields a
 * program declares and the data array it is run with come from the same table, so their order
 * cannot drift apart.
 */
import { AttentionProblem, UniformScalar } from '../../src/contract';
import { Uniform } from './program';

const DATA_TYPE: Record<UniformScalar, Uniform['type']> = { f32: 'float32', i32: 'int32', u32: 'uint32' };

export interface ProgramUniforms {
  /** Fields of the program's uniform struct, as `program.uniforms` takes them. */
  fields: string;
  /** The values, in the same order, as `runWebGPUProgram` takes them. */
  data: Uniform[];
}

export function optionUniforms(p: AttentionProblem): ProgramUniforms {
  return {
    fields: p.uniforms.map(u => `${u.name} : ${u.type},`).join(' '),
    data: p.uniforms.map(u => ({ type: DATA_TYPE[u.type], data: [u.value] })),
  };
}
