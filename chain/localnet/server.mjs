// gpumesh-localnet: a small Solana JSON-RPC endpoint for gpumesh's tests and
// demo. gpumesh anchors proofs of completed GPU work on Solana; no public
// cluster is reachable from CI, so this server answers the JSON-RPC calls the
// chain package makes (through solana-go) from a LiteSVM instance: the real
// Solana runtime with the System, SPL Token and Memo programs, which checks
// signatures and charges fees. On top of it the server keeps what a validator
// would: a slot clock, recent blockhashes, and each transaction's slot, status
// and metadata. It answers the token calls a client needs
// (getTokenAccountsByOwner, getTokenAccountBalance, getTokenSupply, jsonParsed
// token accounts and mints, pre/postTokenBalances), and has a token faucet of
// its own: gpumesh_createMint [decimals] and gpumesh_mintTo [mint, owner,
// amount] (no public node has these).
//
// Usage: node server.mjs [--host 127.0.0.1] [--port 0] [--slot-ms 400]
//                        [--finalize-slots 2] [--verbose]
//
// The first line on stdout is "gpumesh-localnet listening on http://HOST:PORT".
// The server stops on SIGTERM or SIGINT, and when its stdin is a pipe that
// closes (so it never outlives the process that started it).

import fs from 'node:fs';
import http from 'node:http';
import crypto from 'node:crypto';

const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 20 || (major === 20 && minor < 18)) {
  console.error(`gpumesh-localnet: Node.js ${process.versions.node} is too old: litesvm needs Node.js >= 20.18`);
  process.exit(1);
}
let LiteSVM, kit;
try {
  ({ LiteSVM } = await import('litesvm'));
  kit = await import('@solana/kit');
} catch (e) {
  console.error(`gpumesh-localnet: cannot load litesvm (${e.message}); run \`npm ci\` in ${import.meta.dirname}`);
  process.exit(1);
}

// ---- flags ----

const flags = { host: '127.0.0.1', port: 0, slotMs: 400, finalizeSlots: 2, verbose: false };
for (let i = 2; i < process.argv.length; i++) {
  const [name, inline] = process.argv[i].split(/=(.*)/s, 2);
  const value = () => inline ?? process.argv[++i];
  switch (name) {
    case '--host': flags.host = value(); break;
    case '--port': flags.port = Number(value()); break;
    case '--slot-ms': flags.slotMs = Number(value()); break;
    case '--finalize-slots': flags.finalizeSlots = Number(value()); break;
    case '--verbose': flags.verbose = true; break;
    default:
      console.error(`gpumesh-localnet: unknown flag ${name}\nusage: node server.mjs [--host H] [--port N] [--slot-ms MS] [--finalize-slots N] [--verbose]`);
      process.exit(2);
  }
}
for (const k of ['port', 'slotMs', 'finalizeSlots']) {
  if (!Number.isInteger(flags[k]) || flags[k] < 0 || (k === 'slotMs' && flags[k] === 0)) {
    console.error(`gpumesh-localnet: bad value for ${k}: ${flags[k]}`);
    process.exit(2);
  }
}

// ---- constants and small helpers ----

const MAX_BODY = 1 << 20;               // bytes in one HTTP request body
const LAMPORTS_PER_SIGNATURE = 5000n;
const BLOCKHASH_LIFETIME = 150;         // blocks a blockhash stays valid, as on a real cluster
const SLOTS_PER_EPOCH = 432000;
const RENT_EPOCH_EXEMPT = 18446744073709551615n; // what real nodes report for rent-exempt accounts
const SYSTEM_PROGRAM = '11111111111111111111111111111111';
const COMPUTE_BUDGET_PROGRAM = 'ComputeBudget111111111111111111111111111111';
const TOKEN_PROGRAM = 'TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA';
const TOKEN_2022_PROGRAM = 'TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb';
const ATA_PROGRAM = 'ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL';
const TOKEN_ACCOUNT_SIZE = 165;         // bytes of an SPL token account (without extensions)
const MINT_SIZE = 82;                   // bytes of an SPL mint
const LITESVM_VERSION = JSON.parse(fs.readFileSync(new URL('./node_modules/litesvm/package.json', import.meta.url))).version;

const b58 = (bytes) => kit.getBase58Decoder().decode(bytes);
const fromB58 = (s) => kit.getBase58Encoder().encode(s);
const ZERO_SIGNATURE = b58(new Uint8Array(64));

// Names of LiteSVM's field-less error codes, in its enum order; the JSON
// shapes below are the ones a real node puts in "err".
const TX_ERRORS = ('AccountInUse AccountLoadedTwice AccountNotFound ProgramAccountNotFound InsufficientFundsForFee ' +
  'InvalidAccountForFee AlreadyProcessed BlockhashNotFound CallChainTooDeep MissingSignatureForFee InvalidAccountIndex ' +
  'SignatureFailure InvalidProgramForExecution SanitizeFailure ClusterMaintenance AccountBorrowOutstanding ' +
  'WouldExceedMaxBlockCostLimit UnsupportedVersion InvalidWritableAccount WouldExceedMaxAccountCostLimit ' +
  'WouldExceedAccountDataBlockLimit TooManyAccountLocks AddressLookupTableNotFound InvalidAddressLookupTableOwner ' +
  'InvalidAddressLookupTableData InvalidAddressLookupTableIndex InvalidRentPayingAccount WouldExceedMaxVoteCostLimit ' +
  'WouldExceedAccountDataTotalLimit MaxLoadedAccountsDataSizeExceeded ResanitizationNeeded ' +
  'InvalidLoadedAccountsDataSizeLimit UnbalancedTransaction ProgramCacheHitMaxLimit CommitCancelled').split(' ');
const IX_ERRORS = ('GenericError InvalidArgument InvalidInstructionData InvalidAccountData AccountDataTooSmall ' +
  'InsufficientFunds IncorrectProgramId MissingRequiredSignature AccountAlreadyInitialized UninitializedAccount ' +
  'UnbalancedInstruction ModifiedProgramId ExternalAccountLamportSpend ExternalAccountDataModified ReadonlyLamportChange ' +
  'ReadonlyDataModified DuplicateAccountIndex ExecutableModified RentEpochModified NotEnoughAccountKeys ' +
  'AccountDataSizeChanged AccountNotExecutable AccountBorrowFailed AccountBorrowOutstanding DuplicateAccountOutOfSync ' +
  'InvalidError ExecutableDataModified ExecutableLamportChange ExecutableAccountNotRentExempt UnsupportedProgramId ' +
  'CallDepth MissingAccount ReentrancyNotAllowed MaxSeedLengthExceeded InvalidSeeds InvalidRealloc ' +
  'ComputationalBudgetExceeded PrivilegeEscalation ProgramEnvironmentSetupFailure ProgramFailedToComplete ' +
  'ProgramFailedToCompile Immutable IncorrectAuthority AccountNotRentExempt InvalidAccountOwner ArithmeticOverflow ' +
  'UnsupportedSysvar IllegalOwner MaxAccountsDataAllocationsExceeded MaxAccountsExceeded ' +
  'MaxInstructionTraceLengthExceeded BuiltinProgramsMustConsumeComputeUnits BorshIoError').split(' ');

function errorJSON(e) {
  if (typeof e === 'number') return TX_ERRORS[e] ?? `Unknown(${e})`;
  switch (e.constructor.name) {
    case 'TransactionErrorInstructionError': {
      const ie = e.err();
      const inner = typeof ie === 'number' ? IX_ERRORS[ie] ?? `Unknown(${ie})`
        : ie.constructor.name === 'InstructionErrorCustom' ? { Custom: ie.code } : { BorshIoError: ie.msg };
      return { InstructionError: [e.index, inner] };
    }
    case 'TransactionErrorDuplicateInstruction': return { DuplicateInstruction: e.index };
    case 'TransactionErrorInsufficientFundsForRent': return { InsufficientFundsForRent: { account_index: e.accountIndex } };
    default: return { [e.constructor.name.replace(/^TransactionError/, '')]: { account_index: e.accountIndex } };
  }
}

// errorText words an "err" value the way a node's preflight message does,
// e.g. "Error processing Instruction 0: custom program error: 0x1".
function errorText(err) {
  const words = (s) => s.replace(/([a-z])([A-Z])/g, '$1 $2').toLowerCase();
  if (err === 'BlockhashNotFound') return 'Blockhash not found';
  if (err === 'AlreadyProcessed') return 'This transaction has already been processed';
  if (err === 'AccountNotFound') return 'Attempt to debit an account but found no record of a prior credit.';
  if (typeof err === 'string') return words(err).replace(/^./, (c) => c.toUpperCase());
  if (err.InstructionError) {
    const [i, ie] = err.InstructionError;
    const what = ie.Custom !== undefined ? `custom program error: 0x${ie.Custom.toString(16)}` : words(typeof ie === 'string' ? ie : Object.keys(ie)[0]);
    return `Error processing Instruction ${i}: ${what}`;
  }
  return words(Object.keys(err)[0]);
}

// toJSON writes JSON with bigints as plain integers (lamports can pass 2^53).
function toJSON(v) {
  if (typeof v === 'bigint') return v.toString();
  if (v === null || v === undefined) return 'null';
  if (Array.isArray(v)) return `[${v.map(toJSON).join(',')}]`;
  if (typeof v === 'object') {
    return `{${Object.entries(v).filter(([, x]) => x !== undefined).map(([k, x]) => `${JSON.stringify(k)}:${toJSON(x)}`).join(',')}}`;
  }
  return JSON.stringify(v);
}

class RpcError extends Error {
  constructor(code, message, data) { super(message); this.code = code; this.data = data; }
}
const invalidParams = (msg) => new RpcError(-32602, `Invalid params: ${msg}`);

// ---- the chain: LiteSVM plus a slot clock, blockhashes and a ledger ----

// LiteSVM only accepts its own latest blockhash; a real cluster accepts any
// of the last 150 blocks', so the server checks blockhashes itself.
const svm = new LiteSVM().withBlockhashCheck(false);
let slot = 0;
const blockhashes = new Map();   // blockhash -> lastValidBlockHeight (block height == slot here)
const ledger = new Map();        // signature -> landed transaction record
const genesisHash = b58(crypto.randomBytes(32));
const featureSet = crypto.randomBytes(4).readUInt32LE();

function setClock() {
  const clock = svm.getClock();
  clock.slot = BigInt(slot);
  clock.epoch = BigInt(Math.floor(slot / SLOTS_PER_EPOCH));
  clock.unixTimestamp = BigInt(Math.floor(Date.now() / 1000));
  svm.setClock(clock);
}

// advance makes a new slot: the clock moves, and the slot gets a fresh
// blockhash; blockhashes past their last valid block height are forgotten.
function advance() {
  slot++;
  svm.warpToSlot(BigInt(slot));
  setClock();
  svm.expireBlockhash();
  blockhashes.set(svm.latestBlockhash(), slot + BLOCKHASH_LIFETIME);
  for (const [hash, lastValid] of blockhashes) {
    if (lastValid >= slot) break;
    blockhashes.delete(hash);
  }
}
setClock();
blockhashes.set(svm.latestBlockhash(), slot + BLOCKHASH_LIFETIME);

const blockhashValid = (hash) => (blockhashes.get(hash) ?? -1) >= slot;
const context = (value) => ({ context: { slot }, value });

// The faucet behind requestAirdrop: an ordinary funded account whose
// transfers go through the same path as every other transaction.
const faucet = await kit.generateKeyPairSigner();
svm.setAccount({ address: faucet.address, lamports: 500_000_000n * 1_000_000_000n, data: new Uint8Array(), programAddress: SYSTEM_PROGRAM, executable: false });

// faucetSend signs instructions with the faucet as fee payer (and any
// signers their accounts carry) and lands them like any transaction.
async function faucetSend(instructions) {
  const message = kit.pipe(
    kit.createTransactionMessage({ version: 'legacy' }),
    (m) => kit.setTransactionMessageFeePayerSigner(faucet, m),
    (m) => kit.setTransactionMessageLifetimeUsingBlockhash({ blockhash: svm.latestBlockhash(), lastValidBlockHeight: BigInt(slot + BLOCKHASH_LIFETIME) }, m),
    (m) => kit.appendTransactionMessageInstructions(instructions, m),
  );
  const signed = await kit.signTransactionMessageWithSigners(message);
  const bytes = kit.getTransactionEncoder().encode(signed);
  return land(decodeTransaction(Buffer.from(bytes).toString('base64'), 'base64'), { preflight: true });
}

// associatedTokenAddress is the owner's associated token account of a mint
// (the SPL Token program's).
function associatedTokenAddress(owner, mint) {
  const enc = kit.getAddressEncoder();
  return kit.getProgramDerivedAddress({ programAddress: ATA_PROGRAM, seeds: [enc.encode(owner), enc.encode(TOKEN_PROGRAM), enc.encode(mint)] });
}

const COMMITMENTS = ['processed', 'confirmed', 'finalized'];
function statusOf(rec) {
  const age = slot - rec.slot;
  const level = age >= 1 + flags.finalizeSlots ? 2 : age >= 1 ? 1 : 0;
  return {
    slot: rec.slot,
    confirmations: level === 2 ? null : age,
    err: rec.err,
    status: rec.err === null ? { Ok: null } : { Err: rec.err },
    confirmationStatus: COMMITMENTS[level],
  };
}
const reached = (rec, commitment) => COMMITMENTS.indexOf(statusOf(rec).confirmationStatus) >= COMMITMENTS.indexOf(commitment);

function decodeTransaction(encoded, encoding = 'base58') {
  if (typeof encoded !== 'string') throw invalidParams('transaction must be a string');
  let bytes;
  if (encoding === 'base64') bytes = Buffer.from(encoded, 'base64');
  else if (encoding === 'base58') { try { bytes = fromB58(encoded); } catch { throw invalidParams('invalid base58 encoding'); } }
  else throw invalidParams(`unsupported encoding: ${encoding}. Supported encodings: base58, base64`);
  try {
    const tx = kit.getTransactionDecoder().decode(bytes);
    const message = kit.getCompiledTransactionMessageDecoder().decode(tx.messageBytes);
    return { tx, message, bytes: Uint8Array.from(bytes) };
  } catch (e) {
    throw invalidParams(`failed to deserialize transaction: ${e.message}`);
  }
}

// Addresses a v0 transaction loads from address lookup tables (a table's
// addresses start 56 bytes into its account data).
function loadedAddresses(message) {
  const out = { writable: [], readonly: [] };
  for (const lookup of message.addressTableLookups ?? []) {
    const table = svm.getAccount(lookup.lookupTableAddress);
    if (!table.exists) continue;
    const at = (i) => b58(table.data.subarray(56 + 32 * i, 88 + 32 * i));
    out.writable.push(...lookup.writableIndexes.map(at));
    out.readonly.push(...lookup.readonlyIndexes.map(at));
  }
  return out;
}

function innerInstructionsJSON(meta) {
  return meta.innerInstructions().map((list, index) => ({
    index,
    instructions: list.map((ii) => {
      const ix = ii.instruction();
      return { programIdIndex: ix.programIdIndex(), accounts: [...ix.accounts()], data: b58(ix.data()), stackHeight: ii.stackHeight() };
    }),
  })).filter((x) => x.instructions.length > 0);
}

function signatureFailure() {
  return new RpcError(-32003, 'Transaction signature verification failure');
}

// land runs one transaction through LiteSVM. With preflight it is simulated
// first and a failure comes back as the node's -32002 error, changing
// nothing; without, it is executed as is and, if it was charged a fee, kept in
// the ledger with its error. Like a real leader, a transaction that could not
// even pay its fee (bad blockhash, duplicate, bad signature) is dropped.
function land(decoded, { preflight }) {
  const { tx, message } = decoded;
  const signers = message.staticAccounts.slice(0, message.header.numSignerAccounts);
  const signatures = signers.map((a) => (tx.signatures[a] ? b58(tx.signatures[a]) : ZERO_SIGNATURE));
  const signature = signatures[0];
  const preflightError = (err, meta) => new RpcError(-32002, `Transaction simulation failed: ${errorText(err)}`, {
    accounts: null, err, innerInstructions: null, logs: meta ? meta.logs() : [], replacementBlockhash: null,
    returnData: null, unitsConsumed: meta ? meta.computeUnitsConsumed() : 0n,
  });
  if (!blockhashValid(message.lifetimeToken)) {
    if (preflight) throw preflightError('BlockhashNotFound');
    return signature;
  }
  if (preflight) {
    if (signatures.includes(ZERO_SIGNATURE)) throw signatureFailure();
    const sim = svm.simulateTransaction(tx);
    if (sim.constructor.name === 'FailedTransactionMetadata') {
      const err = errorJSON(sim.err());
      if (err === 'SignatureFailure') throw signatureFailure();
      throw preflightError(err, sim.meta());
    }
  }
  const loaded = loadedAddresses(message);
  const keys = [...message.staticAccounts, ...loaded.writable, ...loaded.readonly];
  const balances = () => keys.map((k) => svm.getBalance(k) ?? 0n);
  const preBalances = balances();
  const preTokenBalances = tokenBalances(keys);
  let result;
  try {
    result = svm.sendTransaction(tx);
  } catch (e) {
    if (kit.isSolanaError(e, kit.SOLANA_ERROR__TRANSACTION__SIGNATURES_MISSING)) {
      if (preflight) throw signatureFailure();
      return signature;
    }
    throw e;
  }
  const postBalances = balances();
  const postTokenBalances = tokenBalances(keys);
  const fee = preBalances.reduce((a, b) => a + b, 0n) - postBalances.reduce((a, b) => a + b, 0n);
  const failed = result.constructor.name === 'FailedTransactionMetadata';
  const meta = failed ? result.meta() : result;
  const err = failed ? errorJSON(result.err()) : null;
  if (failed && fee <= 0n) {
    if (preflight) throw err === 'SignatureFailure' ? signatureFailure() : preflightError(err, meta);
    return signature;
  }
  ledger.set(signature, {
    slot, blockTime: Math.floor(Date.now() / 1000), signatures, message, bytes: decoded.bytes, err, fee,
    preBalances, postBalances, preTokenBalances, postTokenBalances, loaded, logs: meta.logs(), inner: innerInstructionsJSON(meta),
    unitsConsumed: meta.computeUnitsConsumed(),
  });
  if (flags.verbose) console.error(`slot ${slot}: ${signature} ${err ? `failed: ${JSON.stringify(err)}` : 'ok'}`);
  return signature;
}

// Fee for a message: 5,000 lamports a signature plus any priority fee set
// with the Compute Budget program (micro-lamports per compute unit).
function feeFor(message) {
  let fee = LAMPORTS_PER_SIGNATURE * BigInt(message.header.numSignerAccounts);
  let price = 0n, limit = null, others = 0n;
  for (const ix of message.instructions) {
    const data = ix.data ?? new Uint8Array();
    if (message.staticAccounts[ix.programAddressIndex] !== COMPUTE_BUDGET_PROGRAM) { others++; continue; }
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    if (data[0] === 2 && data.length >= 5) limit = BigInt(view.getUint32(1, true));
    if (data[0] === 3 && data.length >= 9) price = view.getBigUint64(1, true);
  }
  limit ??= others * 200_000n < 1_400_000n ? others * 200_000n : 1_400_000n;
  return fee + (price * limit + 999_999n) / 1_000_000n;
}

function accountJSON(address, config = {}) {
  let account;
  try { account = svm.getAccount(kit.address(address)); } catch { throw invalidParams(`invalid address: ${address}`); }
  if (!account.exists) return null;
  let data = account.data;
  if (config.dataSlice) {
    const offset = Number(config.dataSlice.offset) || 0;
    data = data.subarray(offset, offset + (Number(config.dataSlice.length) || 0));
  }
  // jsonParsed reads the SPL Token programs' accounts and falls back to
  // base64 for the rest, as a node does for data it has no parser for.
  const parsed = config.encoding === 'jsonParsed' && !config.dataSlice ? parsedJSON(account) : null;
  const encoded = parsed ?? (config.encoding === 'base58' ? [b58(data), 'base58'] : [Buffer.from(data).toString('base64'), 'base64']);
  return {
    lamports: account.lamports, owner: account.programAddress, data: encoded, executable: account.executable,
    rentEpoch: RENT_EPOCH_EXEMPT, space: BigInt(account.data.length),
  };
}

// ---- SPL tokens: the account layouts a node's jsonParsed and token methods read ----

const isTokenProgram = (owner) => owner === TOKEN_PROGRAM || owner === TOKEN_2022_PROGRAM;
const u64 = (data, at) => new DataView(data.buffer, data.byteOffset, data.byteLength).getBigUint64(at, true);
const u32 = (data, at) => new DataView(data.buffer, data.byteOffset, data.byteLength).getUint32(at, true);
const option = (data, at) => (u32(data, at) === 1 ? b58(data.subarray(at + 4, at + 36)) : null);

// tokenAccountOf reads an SPL token account (mint, owner, amount, ...), or
// null when the account is not one.
function tokenAccountOf(account) {
  if (!account?.exists || !isTokenProgram(account.programAddress) || account.data.length < TOKEN_ACCOUNT_SIZE) return null;
  if (account.data.length > TOKEN_ACCOUNT_SIZE && account.data[TOKEN_ACCOUNT_SIZE] !== 2) return null; // Token-2022: AccountType::Account
  const d = account.data;
  const state = d[108];
  if (state === 0) return null; // uninitialized
  return {
    mint: b58(d.subarray(0, 32)), owner: b58(d.subarray(32, 64)), amount: u64(d, 64),
    delegate: option(d, 72), state: state === 2 ? 'frozen' : 'initialized',
    isNative: u32(d, 109) === 1, delegatedAmount: u64(d, 121), closeAuthority: option(d, 129),
    programId: account.programAddress,
  };
}

// mintOf reads an SPL mint, or null.
function mintOf(account) {
  if (!account?.exists || !isTokenProgram(account.programAddress) || account.data.length < MINT_SIZE) return null;
  if (account.data.length === TOKEN_ACCOUNT_SIZE) return null;
  const d = account.data;
  if (d[45] !== 1) return null; // not initialized
  return { mintAuthority: option(d, 0), supply: u64(d, 36), decimals: d[44], freezeAuthority: option(d, 46) };
}

function checkAddress(address, what = 'address') {
  try { return kit.address(address); } catch { throw invalidParams(`invalid ${what}: ${address}`); }
}
const svmAccount = (address, what) => svm.getAccount(checkAddress(address, what));

function decimalsOf(mint) {
  return mintOf(svm.getAccount(kit.address(mint)))?.decimals ?? 0;
}

// uiAmount is the JSON a node gives for a token amount.
function uiAmount(amount, decimals) {
  const s = amount.toString().padStart(decimals + 1, '0');
  const whole = s.slice(0, s.length - decimals), frac = s.slice(s.length - decimals).replace(/0+$/, '');
  const text = frac ? `${whole}.${frac}` : whole;
  return { amount: amount.toString(), decimals, uiAmount: Number(text), uiAmountString: text };
}

// parsedJSON is an account's data as a node's jsonParsed encoding gives it
// for the SPL Token programs, or null for data it has no parser for.
function parsedJSON(account) {
  const program = account.programAddress === TOKEN_2022_PROGRAM ? 'spl-token-2022' : 'spl-token';
  const ta = tokenAccountOf(account);
  if (ta) {
    const info = { isNative: ta.isNative, mint: ta.mint, owner: ta.owner, state: ta.state, tokenAmount: uiAmount(ta.amount, decimalsOf(ta.mint)) };
    if (ta.delegate) Object.assign(info, { delegate: ta.delegate, delegatedAmount: uiAmount(ta.delegatedAmount, decimalsOf(ta.mint)) });
    if (ta.closeAuthority) info.closeAuthority = ta.closeAuthority;
    return { program, parsed: { info, type: 'account' }, space: BigInt(account.data.length) };
  }
  const m = mintOf(account);
  if (m) {
    return {
      program, space: BigInt(account.data.length),
      parsed: { type: 'mint', info: { decimals: m.decimals, freezeAuthority: m.freezeAuthority, isInitialized: true, mintAuthority: m.mintAuthority, supply: m.supply.toString() } },
    };
  }
  return null;
}

// tokenBalances is getTransaction's pre/postTokenBalances: every token
// account among a transaction's keys, as it is now.
function tokenBalances(keys) {
  const out = [];
  keys.forEach((k, accountIndex) => {
    const ta = tokenAccountOf(svm.getAccount(k));
    if (ta) out.push({ accountIndex, mint: ta.mint, owner: ta.owner, programId: ta.programId, uiTokenAmount: uiAmount(ta.amount, decimalsOf(ta.mint)) });
  });
  return out;
}

function transactionJSON(rec, encoding) {
  if (encoding === 'base64') return [Buffer.from(rec.bytes).toString('base64'), 'base64'];
  if (encoding === 'base58') return [b58(rec.bytes), 'base58'];
  const m = rec.message;
  const message = {
    accountKeys: m.staticAccounts,
    header: {
      numRequiredSignatures: m.header.numSignerAccounts,
      numReadonlySignedAccounts: m.header.numReadonlySignerAccounts,
      numReadonlyUnsignedAccounts: m.header.numReadonlyNonSignerAccounts,
    },
    recentBlockhash: m.lifetimeToken,
    instructions: m.instructions.map((ix) => ({
      programIdIndex: ix.programAddressIndex, accounts: ix.accountIndices ?? [], data: b58(ix.data ?? new Uint8Array()), stackHeight: null,
    })),
  };
  if (m.version !== 'legacy') {
    message.addressTableLookups = (m.addressTableLookups ?? []).map((l) => ({
      accountKey: l.lookupTableAddress, writableIndexes: l.writableIndexes, readonlyIndexes: l.readonlyIndexes,
    }));
  }
  return { signatures: rec.signatures, message };
}

// ---- the JSON-RPC methods ----

const cfg = (params, i) => (params[i] && typeof params[i] === 'object' && !Array.isArray(params[i]) ? params[i] : {});

const methods = {
  getHealth: () => 'ok',
  getVersion: () => ({ 'solana-core': `litesvm-${LITESVM_VERSION}`, 'feature-set': featureSet }),
  getGenesisHash: () => genesisHash,
  getSlot: () => slot,
  getBlockHeight: () => slot,
  getTransactionCount: () => ledger.size,
  getEpochInfo: () => ({
    absoluteSlot: slot, blockHeight: slot, epoch: Math.floor(slot / SLOTS_PER_EPOCH),
    slotIndex: slot % SLOTS_PER_EPOCH, slotsInEpoch: SLOTS_PER_EPOCH, transactionCount: ledger.size,
  }),
  getLatestBlockhash: () => {
    const blockhash = svm.latestBlockhash();
    return context({ blockhash, lastValidBlockHeight: blockhashes.get(blockhash) });
  },
  isBlockhashValid: ([hash]) => context(blockhashValid(hash)),
  getFeeForMessage: ([encoded]) => {
    let message;
    try { message = kit.getCompiledTransactionMessageDecoder().decode(Buffer.from(String(encoded), 'base64')); } catch (e) { throw invalidParams(`invalid message: ${e.message}`); }
    return context(blockhashValid(message.lifetimeToken) ? feeFor(message) : null);
  },
  getMinimumBalanceForRentExemption: ([size]) => {
    if (!Number.isInteger(size) || size < 0) throw invalidParams('data length must be a non-negative integer');
    return svm.minimumBalanceForRentExemption(BigInt(size));
  },
  getBalance: ([address]) => context(accountJSON(address)?.lamports ?? 0n),
  getAccountInfo: (params) => context(accountJSON(params[0], cfg(params, 1))),
  getMultipleAccounts: (params) => {
    if (!Array.isArray(params[0])) throw invalidParams('expected an array of addresses');
    if (params[0].length > 100) throw invalidParams('too many addresses (at most 100)');
    return context(params[0].map((a) => accountJSON(a, cfg(params, 1))));
  },
  getRecentPrioritizationFees: () => [],

  sendTransaction: (params) => {
    const c = cfg(params, 1);
    return land(decodeTransaction(params[0], c.encoding), { preflight: !c.skipPreflight });
  },
  simulateTransaction: (params) => {
    const c = cfg(params, 1);
    const { tx, message } = decodeTransaction(params[0], c.encoding);
    if (c.sigVerify && c.replaceRecentBlockhash) throw invalidParams('sigVerify may not be used with replaceRecentBlockhash');
    const value = { err: null, logs: [], accounts: null, unitsConsumed: 0n, returnData: null, innerInstructions: null };
    if (!c.replaceRecentBlockhash && !blockhashValid(message.lifetimeToken)) return context({ ...value, err: 'BlockhashNotFound' });
    svm.withSigverify(Boolean(c.sigVerify));
    let sim;
    try {
      sim = svm.simulateTransaction(tx);
    } catch (e) {
      if (kit.isSolanaError(e, kit.SOLANA_ERROR__TRANSACTION__SIGNATURES_MISSING)) throw signatureFailure();
      throw e;
    } finally {
      svm.withSigverify(true);
    }
    const failed = sim.constructor.name === 'FailedTransactionMetadata';
    const meta = sim.meta();
    value.err = failed ? errorJSON(sim.err()) : null;
    value.logs = meta.logs();
    value.unitsConsumed = meta.computeUnitsConsumed();
    if (c.innerInstructions) value.innerInstructions = innerInstructionsJSON(meta);
    if (c.replaceRecentBlockhash) value.replacementBlockhash = { blockhash: svm.latestBlockhash(), lastValidBlockHeight: blockhashes.get(svm.latestBlockhash()) };
    if (c.accounts?.addresses) {
      const post = failed ? [] : sim.postAccounts();
      value.accounts = c.accounts.addresses.map((a) => {
        const acc = post.find((p) => p.address === a);
        if (!acc) return accountJSON(a, c.accounts);
        return { lamports: acc.lamports, owner: acc.programAddress, data: [Buffer.from(acc.data).toString('base64'), 'base64'], executable: acc.executable, rentEpoch: RENT_EPOCH_EXEMPT, space: BigInt(acc.data.length) };
      });
    }
    return context(value);
  },
  requestAirdrop: async ([address, lamports]) => {
    if (!Number.isSafeInteger(lamports) || lamports <= 0) throw invalidParams('lamports must be a positive integer');
    let to;
    try { to = kit.address(address); } catch { throw invalidParams(`invalid address: ${address}`); }
    const data = new Uint8Array(12);
    new DataView(data.buffer).setUint32(0, 2, true);             // System program: Transfer
    new DataView(data.buffer).setBigUint64(4, BigInt(lamports), true);
    return faucetSend([{
      programAddress: SYSTEM_PROGRAM, data,
      accounts: [{ address: faucet.address, role: kit.AccountRole.WRITABLE_SIGNER }, { address: to, role: kit.AccountRole.WRITABLE }],
    }]);
  },

  // The token faucet, a test server's own methods (no public node has
  // them): gpumesh_createMint makes an SPL token mint whose mint authority
  // is the faucet; gpumesh_mintTo mints to an owner's associated token
  // account, made first if missing. Both are ordinary transactions.
  gpumesh_createMint: async ([decimals]) => {
    if (!Number.isInteger(decimals) || decimals < 0 || decimals > 18) throw invalidParams('decimals must be an integer 0..18');
    const mint = await kit.generateKeyPairSigner();
    const create = new Uint8Array(52);                           // System program: CreateAccount
    const view = new DataView(create.buffer);
    view.setUint32(0, 0, true);
    view.setBigUint64(4, svm.minimumBalanceForRentExemption(BigInt(MINT_SIZE)), true);
    view.setBigUint64(12, BigInt(MINT_SIZE), true);
    create.set(kit.getAddressEncoder().encode(TOKEN_PROGRAM), 20);
    const init = new Uint8Array(35);                             // Token: InitializeMint2, no freeze authority
    init[0] = 20; init[1] = decimals;
    init.set(kit.getAddressEncoder().encode(faucet.address), 2);
    const signature = await faucetSend([
      { programAddress: SYSTEM_PROGRAM, data: create, accounts: [
        { address: faucet.address, role: kit.AccountRole.WRITABLE_SIGNER },
        { address: mint.address, role: kit.AccountRole.WRITABLE_SIGNER, signer: mint }] },
      { programAddress: TOKEN_PROGRAM, data: init, accounts: [{ address: mint.address, role: kit.AccountRole.WRITABLE }] },
    ]);
    return { mint: mint.address, signature };
  },
  gpumesh_mintTo: async ([mint, owner, amount]) => {
    const m = mintOf(svmAccount(mint, 'mint'));
    if (!m) throw invalidParams(`${mint} is not an SPL token mint`);
    if (m.mintAuthority !== faucet.address) throw invalidParams(`mint ${mint} is not this localnet's (its mint authority is ${m.mintAuthority})`);
    checkAddress(owner, 'owner');
    let n;
    try { n = BigInt(amount); } catch { throw invalidParams('amount must be an integer of the token\'s smallest unit'); }
    if (n <= 0n || n >= 1n << 64n) throw invalidParams('amount must be a positive 64-bit integer');
    const [ata] = await associatedTokenAddress(owner, mint);
    const data = new Uint8Array(9);                              // Token: MintTo
    data[0] = 7;
    new DataView(data.buffer).setBigUint64(1, n, true);
    return faucetSend([
      { programAddress: ATA_PROGRAM, data: Uint8Array.of(1), accounts: [             // CreateIdempotent
        { address: faucet.address, role: kit.AccountRole.WRITABLE_SIGNER }, { address: ata, role: kit.AccountRole.WRITABLE },
        { address: owner, role: kit.AccountRole.READONLY }, { address: mint, role: kit.AccountRole.READONLY },
        { address: SYSTEM_PROGRAM, role: kit.AccountRole.READONLY }, { address: TOKEN_PROGRAM, role: kit.AccountRole.READONLY }] },
      { programAddress: TOKEN_PROGRAM, data, accounts: [
        { address: mint, role: kit.AccountRole.WRITABLE }, { address: ata, role: kit.AccountRole.WRITABLE },
        { address: faucet.address, role: kit.AccountRole.READONLY_SIGNER }] },
    ]);
  },

  getTokenAccountBalance: ([address]) => {
    const account = svmAccount(address);
    if (!account.exists) throw invalidParams('could not find account');
    const ta = tokenAccountOf(account);
    if (!ta) throw invalidParams('not a Token account');
    return context(uiAmount(ta.amount, decimalsOf(ta.mint)));
  },
  getTokenSupply: ([address]) => {
    const account = svmAccount(address, 'mint');
    if (!account.exists) throw invalidParams('could not find account');
    const m = mintOf(account);
    if (!m) throw invalidParams('not a Token mint');
    return context(uiAmount(m.supply, m.decimals));
  },
  getTokenAccountsByOwner: (params) => {
    const owner = checkAddress(params[0], 'owner');
    const filter = cfg(params, 1);
    let programs, mint = null;
    if (typeof filter.mint === 'string') {
      const account = svmAccount(filter.mint, 'mint');
      if (!mintOf(account)) throw invalidParams('could not find mint');
      mint = filter.mint;
      programs = [account.programAddress];
    } else if (typeof filter.programId === 'string') {
      if (!isTokenProgram(filter.programId)) throw invalidParams('unrecognized Token program id');
      programs = [filter.programId];
    } else {
      throw invalidParams('expected a filter: {"mint": MINT} or {"programId": PROGRAM}');
    }
    const out = [];
    for (const program of programs) {
      for (const account of svm.getProgramAccounts(program)) {
        const ta = tokenAccountOf({ ...account, exists: true });
        if (ta && ta.owner === owner && (mint === null || ta.mint === mint)) out.push({ pubkey: account.address, account: accountJSON(account.address, cfg(params, 2)) });
      }
    }
    return context(out);
  },
  getSignatureStatuses: (params) => {
    if (!Array.isArray(params[0])) throw invalidParams('expected an array of signatures');
    if (params[0].length > 256) throw invalidParams('too many signatures (at most 256)');
    return context(params[0].map((s) => (ledger.has(s) ? statusOf(ledger.get(s)) : null)));
  },
  getTransaction: (params) => {
    const c = typeof params[1] === 'string' ? { encoding: params[1] } : cfg(params, 1);
    const commitment = c.commitment ?? 'finalized';
    if (commitment === 'processed') throw invalidParams('Method does not support commitment below `confirmed`');
    const rec = ledger.get(params[0]);
    if (!rec || !reached(rec, commitment)) return null;
    const version = rec.message.version;
    if (version !== 'legacy' && (c.maxSupportedTransactionVersion ?? -1) < version) {
      throw new RpcError(-32015, `Transaction version (${version}) is not supported by the requesting client. Please try the request again with the following configuration parameter: "maxSupportedTransactionVersion": ${version}`);
    }
    const out = {
      slot: rec.slot,
      blockTime: rec.blockTime,
      transaction: transactionJSON(rec, c.encoding ?? 'json'),
      meta: {
        err: rec.err, status: rec.err === null ? { Ok: null } : { Err: rec.err }, fee: rec.fee,
        preBalances: rec.preBalances, postBalances: rec.postBalances, innerInstructions: rec.inner,
        logMessages: rec.logs, preTokenBalances: rec.preTokenBalances, postTokenBalances: rec.postTokenBalances, rewards: [],
        loadedAddresses: rec.loaded, computeUnitsConsumed: rec.unitsConsumed,
      },
    };
    if (c.maxSupportedTransactionVersion !== undefined) out.version = version;
    return out;
  },
};

// ---- JSON-RPC over HTTP ----

async function handle(request) {
  const id = request && typeof request === 'object' && 'id' in request ? request.id : null;
  const reply = (body) => ({ jsonrpc: '2.0', ...body, id });
  if (!request || typeof request !== 'object' || Array.isArray(request) || request.jsonrpc !== '2.0' || typeof request.method !== 'string') {
    return reply({ error: { code: -32600, message: 'Invalid request' } });
  }
  if (flags.verbose) console.error(`rpc ${request.method}`);
  const method = Object.hasOwn(methods, request.method) ? methods[request.method] : null;
  if (!method) return reply({ error: { code: -32601, message: `Method not found: ${request.method}` } });
  const params = request.params === undefined || request.params === null ? [] : request.params;
  if (!Array.isArray(params)) return reply({ error: { code: -32602, message: 'Invalid params: expected an array' } });
  try {
    return reply({ result: (await method(params)) ?? null });
  } catch (e) {
    if (e instanceof RpcError) return reply({ error: { code: e.code, message: e.message, data: e.data } });
    console.error(`gpumesh-localnet: ${request.method}: ${e.stack ?? e}`);
    return reply({ error: { code: -32603, message: `Internal error: ${e.message}` } });
  }
}

function send(res, status, body) {
  const text = toJSON(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/health') {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    return res.end('ok');
  }
  if (req.method !== 'POST') {
    res.writeHead(405, { Allow: 'POST' });
    return res.end();
  }
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size <= MAX_BODY) chunks.push(chunk);
    else if (size > 64 * MAX_BODY) req.destroy();   // stop reading a runaway upload
  });
  req.on('end', async () => {
    if (size > MAX_BODY) {
      return send(res, 413, { jsonrpc: '2.0', error: { code: -32600, message: `request body too large (limit ${MAX_BODY} bytes)` }, id: null });
    }
    let body;
    try { body = JSON.parse(Buffer.concat(chunks).toString('utf8')); } catch {
      return send(res, 200, { jsonrpc: '2.0', error: { code: -32700, message: 'Parse error' }, id: null });
    }
    if (!Array.isArray(body)) return send(res, 200, await handle(body));
    if (body.length === 0) return send(res, 200, { jsonrpc: '2.0', error: { code: -32600, message: 'Invalid request: empty batch' }, id: null });
    const replies = [];
    for (const r of body) replies.push(await handle(r));   // one at a time, in order
    send(res, 200, replies);
  });
});

function stop(why) {
  if (flags.verbose) console.error(`gpumesh-localnet: stopping (${why})`);
  clearInterval(ticker);
  server.close();
  process.exit(0);
}

const ticker = setInterval(advance, flags.slotMs);
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
// A parent that starts the server with a pipe as stdin stops it by closing
// the pipe, or by dying. A terminal or /dev/null as stdin is left alone.
const stdin = fs.fstatSync(0);
if (stdin.isFIFO() || stdin.isSocket()) {
  process.stdin.on('data', () => {});
  process.stdin.on('end', () => stop('stdin closed'));
  process.stdin.on('error', () => stop('stdin error'));
}
server.on('error', (e) => {
  console.error(`gpumesh-localnet: ${e.message}`);
  process.exit(1);
});
server.listen(flags.port, flags.host, () => {
  const { port } = server.address();
  const host = flags.host.includes(':') ? `[${flags.host}]` : flags.host;
  process.stdout.write(`gpumesh-localnet listening on http://${host}:${port}\n`);
});
