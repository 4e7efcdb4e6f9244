// Compiles contracts/src/*.sol with the pinned solc into contracts/out/<Name>.json
// (abi, bytecode, deployedBytecode). With --check, fails if the committed
// artifacts differ from a fresh compile, or if any artifact is left over from
// a contract that no longer exists. Warnings fail the build like errors.
// Interfaces, abstract contracts and libraries without an ABI get no artifact.
//
//   cd contracts && npm ci && node compile.js [--check]
'use strict';
const fs = require('fs');
const path = require('path');
const solc = require('solc');

const src = path.join(__dirname, 'src');
const out = path.join(__dirname, 'out');
const check = process.argv.includes('--check');

const sources = {};
for (const f of fs.readdirSync(src).filter((f) => f.endsWith('.sol')).sort()) {
  sources[f] = { content: fs.readFileSync(path.join(src, f), 'utf8') };
}
const input = {
  language: 'Solidity',
  sources,
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: 'prague',
    metadata: { bytecodeHash: 'none' },
    outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const problems = (output.errors || []).filter((e) => e.severity !== 'info');
for (const e of problems) console.error(e.formattedMessage);
if (problems.length) process.exit(1);

fs.mkdirSync(out, { recursive: true });
let stale = [];
const expected = new Set();
for (const file of Object.keys(output.contracts)) {
  for (const [name, c] of Object.entries(output.contracts[file])) {
    if (c.evm.bytecode.object === '' || c.abi.length === 0) continue;
    expected.add(`${name}.json`);
    const artifact = JSON.stringify(
      {
        contractName: name,
        sourceName: file,
        compiler: `solc ${solc.version()}`,
        abi: c.abi,
        bytecode: '0x' + c.evm.bytecode.object,
        deployedBytecode: '0x' + c.evm.deployedBytecode.object,
      },
      null,
      2,
    ) + '\n';
    const target = path.join(out, `${name}.json`);
    if (check) {
      const committed = fs.existsSync(target) ? fs.readFileSync(target, 'utf8') : '';
      if (committed !== artifact) stale.push(target);
    } else {
      fs.writeFileSync(target, artifact);
      console.log(`wrote ${path.relative(process.cwd(), target)}`);
    }
  }
}
for (const f of fs.readdirSync(out).filter((f) => f.endsWith('.json') && !expected.has(f))) {
  if (check) stale.push(path.join(out, f));
  else {
    fs.unlinkSync(path.join(out, f));
    console.log(`removed ${path.relative(process.cwd(), path.join(out, f))}`);
  }
}
if (stale.length) {
  console.error(`stale artifacts (run: cd contracts && node compile.js):\n  ${stale.join('\n  ')}`);
  process.exit(1);
}
if (check) console.log('contract artifacts match a fresh compile');
