// Compile EIP3009Token.sol with the npm `solc` package (solcjs, no download) into the committed
// artifact EIP3009Token.json. Settings are fixed and the metadata hash is off so the output is
// byte-stable: `node compile.mjs --check` fails when the artifact does not match the source.
//
//   node bindu/devnet/contracts/compile.mjs          # rewrite the artifact
//   node bindu/devnet/contracts/compile.mjs --check  # exit 1 if it is stale
import { createHash } from 'node:crypto'
import { readFileSync, writeFileSync, existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const HERE = dirname(fileURLToPath(import.meta.url))
const CONTRACT = 'EIP3009Token'
const SOURCE_FILE = `${CONTRACT}.sol`
const SOURCE_PATH = join(HERE, SOURCE_FILE)
const ARTIFACT_PATH = join(HERE, `${CONTRACT}.json`)

const SETTINGS = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: 'cancun',
  metadata: { bytecodeHash: 'none' },
  outputSelection: {
    '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] },
  },
}

// Resolve `solc` next to this file first (repo checkout), then from the working directory
// (e.g. the package installed elsewhere but run from the repo root).
function loadSolc() {
  for (const base of [join(HERE, 'compile.mjs'), join(process.cwd(), 'noop.js')]) {
    try {
      return createRequire(base)('solc')
    } catch {
      // try the next base
    }
  }
  console.error('solc not found: run `npm ci --ignore-scripts` in the repository root')
  process.exit(2)
}

function compile() {
  const solc = loadSolc()
  const source = readFileSync(SOURCE_PATH)
  const input = {
    language: 'Solidity',
    sources: { [SOURCE_FILE]: { content: source.toString('utf8') } },
    settings: SETTINGS,
  }
  const output = JSON.parse(solc.compile(JSON.stringify(input)))
  const errors = (output.errors || []).filter((e) => e.severity === 'error')
  for (const e of output.errors || []) console.error(e.formattedMessage)
  if (errors.length) process.exit(2)

  const contract = output.contracts[SOURCE_FILE][CONTRACT]
  const { outputSelection, ...recorded } = SETTINGS
  const artifact = {
    contractName: CONTRACT,
    compilerVersion: solc.version(),
    settings: recorded,
    sourceSha256: createHash('sha256').update(source).digest('hex'),
    abi: contract.abi,
    bytecode: '0x' + contract.evm.bytecode.object,
    deployedBytecode: '0x' + contract.evm.deployedBytecode.object,
  }
  return JSON.stringify(artifact, null, 2) + '\n'
}

const fresh = compile()
if (process.argv.includes('--check')) {
  const committed = existsSync(ARTIFACT_PATH) ? readFileSync(ARTIFACT_PATH, 'utf8') : ''
  if (committed !== fresh) {
    console.error(`${ARTIFACT_PATH} is stale: run \`node ${join(HERE, 'compile.mjs')}\``)
    process.exit(1)
  }
  console.log(`${CONTRACT}.json matches ${SOURCE_FILE}`)
} else {
  writeFileSync(ARTIFACT_PATH, fresh)
  console.log(`wrote ${ARTIFACT_PATH}`)
}
