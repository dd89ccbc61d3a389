// VK_ICD_FILENAMES must be in the real environment before Dawn starts: jest gives test sandboxes a
// copy of process.env, so it is set here, in the main process, before workers spawn.
const fs = require('fs');
const ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';
if (!process.env.VK_ICD_FILENAMES && fs.existsSync(ICD)) process.env.VK_ICD_FILENAMES = ICD;
if (!process.env.XDG_RUNTIME_DIR) process.env.XDG_RUNTIME_DIR = '/tmp';   // silences libwayland noise

module.exports = {
  testEnvironment: 'node',
  transform: { '^.+\\.tsx?$': ['ts-jest', {}] },
  testMatch: ['<rootDir>/test/**/*.test.ts'],
  globalSetup: '<rootDir>/test/global-setup.js',
  setupFiles: ['<rootDir>/test/setup-webgpu.ts'],
  testTimeout: 120000,
};
