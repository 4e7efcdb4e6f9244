// Compiles contracts/src/*.sol with the pinned solc into contracts/out/<Name>.json
// (abi, bytecode, deployedBytecode). With --check, fails if the committed
// artifacts differ from a fresh compile.
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
const errors = (output.errors || []).filter((e) => e.severity === 'error');
for (const e of output.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);

fs.mkdirSync(out, { recursive: true });
let stale = [];
for (const file of Object.keys(output.contracts)) {
  for (const [name, c] of Object.entries(output.contracts[file])) {
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
if (stale.length) {
  console.error(`stale artifacts (run: cd contracts && node compile.js):\n  ${stale.join('\n  ')}`);
  process.exit(1);
}
if (check) console.log('contract artifacts match a fresh compile');
