#!/usr/bin/env node
'use strict'
// An exec/attach client for CRI streaming URLs, independent of the server under test:
// SPDY/3.1 through spdy-transport, WebSocket through ws.
//
//   node exec.js <url> [--protocol spdy|ws] [--subprotocol P]... [--stdin-text TEXT]
//        [--stdin-bytes N] [--stdin] [--tty] [--resize WxH] [--no-stdout] [--no-stderr]
//        [--json] [--timeout MS]
//
// Streams requested must match the CRI request: stdout and stderr by default (no stderr
// with --tty), stdin with any --stdin* option. --stdin-text/--stdin-bytes send data and
// then close stdin; --stdin copies this process's stdin.
// Without --json, output goes to stdout/stderr as it arrives and the exit status is the
// command's. With --json, one JSON object is printed and the exit status is 0:
//   { protocol, stdout, stderr, stdoutLength, stdoutSha256, error, status, exitCode }
// where `error` is the raw error stream, `status` its parsed metav1.Status (v4+).
// If the session cannot be set up (HTTP error, timeout), the exit status is 4 and --json
// prints { failed: message, httpStatus }.

const crypto = require('crypto')
const WebSocket = require('ws')
const { parseArgs, spdyConnect, openStream, collect, wsUrl, deadline } = require('./lib')

const SPDY_DEFAULT = ['v4.channel.k8s.io', 'v3.channel.k8s.io', 'v2.channel.k8s.io', 'channel.k8s.io']
const WS_DEFAULT = ['v5.channel.k8s.io', 'v4.channel.k8s.io']

const args = parseArgs(process.argv.slice(2), ['url'], {
  protocol: 'string',
  subprotocol: 'list',
  'stdin-text': 'string',
  'stdin-bytes': 'string',
  stdin: 'bool',
  tty: 'bool',
  resize: 'string',
  'no-stdout': 'bool',
  'no-stderr': 'bool',
  json: 'bool',
  timeout: 'string'
})
const url = args._[0]
const wantStdin = args.stdin || args['stdin-text'] !== undefined || args['stdin-bytes'] !== undefined
const wantStdout = !args['no-stdout']
const wantStderr = !args['no-stderr'] && !args.tty
const timeoutMs = Number(args.timeout || 30000)

// The bytes to send on stdin (null: copy process.stdin).
function stdinPayload () {
  if (args['stdin-text'] !== undefined) return Buffer.from(args['stdin-text'])
  if (args['stdin-bytes'] !== undefined) {
    const n = Number(args['stdin-bytes'])
    const buf = Buffer.alloc(n)
    for (let i = 0; i < n; i++) buf[i] = (i * 7 + (i >> 8)) & 0xff
    return buf
  }
  return null
}

function parseResize () {
  if (!args.resize) return null
  const [w, h] = args.resize.split('x').map(Number)
  return JSON.stringify({ Width: w, Height: h })
}

// Live output for the human mode.
function passthrough (buf, to) {
  if (!args.json && buf.length) to.write(buf)
}

async function execSpdy () {
  const offered = args.subprotocol.length ? args.subprotocol : SPDY_DEFAULT
  const { conn, protocol, socket } = await spdyConnect(url, offered)
  const open = (type) => openStream(conn, { streamType: type })
  // kubectl's order: error first, then the standard streams, then resize.
  const error = await open('error')
  const stdin = wantStdin ? await open('stdin') : null
  const stdout = wantStdout ? await open('stdout') : null
  const stderr = wantStderr ? await open('stderr') : null
  const supportsResize = protocol !== 'channel.k8s.io' && protocol !== 'v2.channel.k8s.io'
  const resize = args.tty && supportsResize ? await open('resize') : null
  // This client never writes on the output streams: half-close them.
  for (const s of [error, stdout, stderr]) if (s) s.end()

  const outs = [collect(error), stdout ? collect(stdout) : Buffer.alloc(0), stderr ? collect(stderr) : Buffer.alloc(0)]
  if (stdout) stdout.on('data', (d) => passthrough(d, process.stdout))
  if (stderr) stderr.on('data', (d) => passthrough(d, process.stderr))
  if (resize) {
    const r = parseResize()
    if (r) resize.write(r)
  }
  if (stdin) {
    const payload = stdinPayload()
    if (payload) stdin.end(payload)
    else process.stdin.pipe(stdin)
  }
  const [errBuf, outBuf, errOut] = await Promise.all(outs)
  socket.destroy()
  return { protocol, error: errBuf, stdout: outBuf, stderr: errOut }
}

function execWs () {
  const offered = args.subprotocol.length ? args.subprotocol : WS_DEFAULT
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl(url), offered)
    const chunks = { 1: [], 2: [], 3: [] }
    let base64 = false
    const send = (channel, data) => {
      if (base64) ws.send(String.fromCharCode(48 + channel) + Buffer.from(data).toString('base64'))
      else ws.send(Buffer.concat([Buffer.from([channel]), Buffer.from(data)]))
    }
    ws.on('unexpected-response', (req, res) => {
      let body = ''
      res.on('data', (d) => { body += d })
      res.on('end', () => reject(new Error(`HTTP ${res.statusCode}: ${body.trim()}`)))
    })
    ws.on('open', () => {
      base64 = ws.protocol.includes('base64')
      const r = args.tty && parseResize()
      if (r) send(4, r)
      if (!wantStdin) return
      const payload = stdinPayload()
      const closeStdin = () => {
        // Only v5 can say "stdin is over" without closing the whole socket.
        if (ws.protocol === 'v5.channel.k8s.io') ws.send(Buffer.from([255, 0]))
      }
      if (payload) {
        if (payload.length) send(0, payload)
        closeStdin()
      } else {
        process.stdin.on('data', (d) => send(0, d))
        process.stdin.on('end', closeStdin)
      }
    })
    ws.on('message', (data, isBinary) => {
      let buf = Buffer.from(data)
      if (!buf.length) return
      let channel = buf[0]
      buf = buf.subarray(1)
      if (!isBinary) {
        channel -= 48
        buf = Buffer.from(buf.toString(), 'base64')
      }
      if (chunks[channel]) chunks[channel].push(buf)
      if (channel === 1) passthrough(buf, process.stdout)
      if (channel === 2) passthrough(buf, process.stderr)
    })
    ws.on('close', () => {
      resolve({
        protocol: ws.protocol,
        stdout: Buffer.concat(chunks[1]),
        stderr: Buffer.concat(chunks[2]),
        error: Buffer.concat(chunks[3])
      })
    })
    ws.on('error', reject)
  })
}

// Interprets the error stream like kubectl: a v4+ JSON status, or (older protocols) a
// failure message, empty on success.
function outcome (protocol, error) {
  const text = error.toString()
  if (/^v[45]\./.test(protocol) || text.startsWith('{')) {
    let status = null
    try { status = JSON.parse(text) } catch (e) { return { status: null, exitCode: 1 } }
    if (status.status === 'Success') return { status, exitCode: 0 }
    if (status.reason === 'NonZeroExitCode') {
      const cause = ((status.details || {}).causes || []).find((c) => c.reason === 'ExitCode')
      return { status, exitCode: cause ? Number(cause.message) : 1 }
    }
    return { status, exitCode: 1 }
  }
  return { status: null, exitCode: text.length ? 1 : 0 }
}

async function main () {
  const mode = args.protocol || 'spdy'
  const run = mode === 'ws' ? execWs() : execSpdy()
  const res = await Promise.race([run, deadline(timeoutMs, `exec over ${mode}`)])
  const { status, exitCode } = outcome(res.protocol, res.error)
  if (args.json) {
    finish(0, JSON.stringify({
      protocol: res.protocol,
      // Large outputs are summarised by length and digest only.
      stdout: res.stdout.length <= 65536 ? res.stdout.toString() : null,
      stderr: res.stderr.toString(),
      stdoutLength: res.stdout.length,
      stdoutSha256: crypto.createHash('sha256').update(res.stdout).digest('hex'),
      error: res.error.toString(),
      status,
      exitCode
    }) + '\n')
    return
  }
  if (exitCode !== 0 && res.error.length) {
    process.stderr.write(`${status ? status.message : res.error.toString()}\n`)
  }
  finish(exitCode, '')
}

// Exits once `text` is flushed (process.exit alone may cut a piped stdout short).
function finish (code, text) {
  process.stdout.write(text, () => process.exit(code))
}

main().catch((e) => {
  process.stderr.write(`exec.js: ${e.message}\n`)
  finish(4, args.json ? JSON.stringify({ failed: e.message, httpStatus: e.status || null }) + '\n' : '')
})
