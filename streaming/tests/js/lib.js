'use strict'
// Shared helpers of the streaming test clients: argument parsing, the HTTP upgrade to
// SPDY/3.1 (node's http client, then spdy-transport as the SPDY client) and WebSocket
// URLs.

const http = require('http')
const transport = require('spdy-transport')

// Parses `--flag value` / `--switch` style options after the positional arguments.
// `spec` maps option names to 'string', 'list' (repeatable) or 'bool'.
function parseArgs (argv, positional, spec) {
  const args = { _: [] }
  for (const [name, kind] of Object.entries(spec)) {
    if (kind === 'bool') args[name] = false
    if (kind === 'list') args[name] = []
  }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (!a.startsWith('--')) {
      args._.push(a)
      continue
    }
    const name = a.slice(2)
    const kind = spec[name]
    if (kind === undefined) usage(`unknown option ${a}`, positional, spec)
    if (kind === 'bool') {
      args[name] = true
      continue
    }
    if (i + 1 >= argv.length) usage(`${a} needs a value`, positional, spec)
    if (kind === 'list') args[name].push(argv[++i])
    else args[name] = argv[++i]
  }
  if (args._.length < positional.length) usage('missing arguments', positional, spec)
  return args
}

function usage (msg, positional, spec) {
  const opts = Object.entries(spec)
    .map(([n, k]) => (k === 'bool' ? `[--${n}]` : `[--${n} X]`))
    .join(' ')
  process.stderr.write(`${msg}\nusage: node ${process.argv[1]} ${positional.map((p) => `<${p}>`).join(' ')} ${opts}\n`)
  process.exit(2)
}

// Upgrades `url` to SPDY/3.1 offering `protocols` (X-Stream-Protocol-Version). Resolves to
// { conn, protocol, socket } or rejects with an Error carrying `.status` and `.body` when
// the server answers without upgrading.
function spdyConnect (url, protocols) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, {
      method: 'POST',
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'SPDY/3.1',
        'X-Stream-Protocol-Version': protocols,
        'Content-Length': '0'
      }
    })
    req.on('upgrade', (res, socket, head) => {
      if (head && head.length) socket.unshift(head)
      const conn = transport.connection.create(socket, { protocol: 'spdy', isServer: false })
      conn.start(3.1)
      conn.on('error', (e) => process.stderr.write(`spdy connection error: ${e.message}\n`))
      resolve({ conn, protocol: res.headers['x-stream-protocol-version'] || '', socket })
    })
    req.on('response', (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d) => { body += d })
      res.on('end', () => {
        const err = new Error(`HTTP ${res.statusCode}: ${body.trim()}`)
        err.status = res.statusCode
        err.body = body
        err.headers = res.headers
        reject(err)
      })
    })
    req.on('error', reject)
    req.end()
  })
}

// Opens a SPDY stream with `headers`; resolves once the SYN_STREAM is sent.
function openStream (conn, headers) {
  return new Promise((resolve, reject) => {
    conn.request({ method: 'POST', path: '/', host: 'localhost', headers }, (err, stream) => {
      if (err) reject(err)
      else resolve(stream)
    })
  })
}

// Collects a readable stream into one Buffer; resolves at its end (or close/error).
function collect (stream) {
  return new Promise((resolve) => {
    const chunks = []
    let done = false
    const finish = () => {
      if (done) return
      done = true
      resolve(Buffer.concat(chunks))
    }
    stream.on('data', (d) => chunks.push(Buffer.from(d)))
    stream.on('end', finish)
    stream.on('close', finish)
    stream.on('error', finish)
  })
}

function wsUrl (url) {
  return url.replace(/^http/, 'ws')
}

// Rejects after `ms` with `what` in the message; `unref`ed so it never keeps node alive.
function deadline (ms, what) {
  return new Promise((resolve, reject) => {
    setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms).unref()
  })
}

module.exports = { parseArgs, spdyConnect, openStream, collect, wsUrl, deadline }
