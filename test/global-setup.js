// Probes for a WebGPU adapter once, in a child process (a driver crash cannot take jest down),
// and exports WEBGPU_ADAPTER to the workers. REQUIRE_WEBGPU=1 (set by CI) makes "no adapter" fatal,
// so a run that silently skipped the WebGPU tests can never look green.
const path = require('path');
const { execFileSync } = require('child_process');
module.exports = async () => {
  let found = '';
  if (process.env.TFJS_BACKEND !== 'cpu') {
    const dawn = path.join(path.dirname(require.resolve('webgpu/package.json')),
      'dist', `${process.platform}-${process.arch}`, 'dawn.node');
    try {
      found = execFileSync(process.execPath, ['-e', `
        const {create, globals} = require(${JSON.stringify(dawn)}); Object.assign(globalThis, globals);
        create([]).requestAdapter().then(a => process.stdout.write(a ? a.info.vendor + '/' + a.info.architecture : ''));`],
        { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 30000 });
    } catch { found = ''; }
  }
  if (!found && process.env.REQUIRE_WEBGPU) throw new Error('REQUIRE_WEBGPU is set but no WebGPU adapter was found (is VK_ICD_FILENAMES pointing at SwiftShader, and libvulkan1 installed?)');
  process.env.WEBGPU_ADAPTER = found;
  console.log(`\nWebGPU adapter: ${found || 'none, WebGPU tests are skipped'}`);
};
