#!/usr/bin/env node
'use strict'
// A port-forward client for CRI streaming URLs, independent of the server under test.
//
//   node portforward.js <url> <port> <payload> [--protocol spdy|ws] [--connections N]
//        [--expect-bytes N] [--subprotocol P]... [--json] [--timeout MS]
//
// SPDY (portforward.k8s.io): opens N forwarded connections at once on one SPDY session
// (an error and a data stream each, requestID 0..N-1), sends <payload> on each and
// half-closes it, then reads until the server ends the data stream.
// WebSocket (?port=<port>): sends <payload> on the port's data channel and reads until
// --expect-bytes (default: the payload length, as from an echo server) came back, then
// closes; the WebSocket protocol has no half-close.
// Prints what came back (each connection's data, in order); --json prints
//   { protocol, connections: [ { data, error } ] }.
// Exit status 4 if the session cannot be set up.

const WebSocket = require('ws')
const { parseArgs, spdyConnect, openStream, collect, wsUrl, deadline } = require('./lib')

const args = parseArgs(process.argv.slice(2), ['url', 'port', 'payload'], {
  protocol: 'string',
  connections: 'string',
  'expect-bytes': 'string',
  subprotocol: 'list',
  json: 'bool',
  timeout: 'string'
})
const [url, port, payload] = args._
const timeoutMs = Number(args.timeout || 30000)

async function forwardSpdy () {
  const offered = args.subprotocol.length ? args.subprotocol : ['portforward.k8s.io']
  const { conn, protocol, socket } = await spdyConnect(url, offered)
  const count = Number(args.connections || 1)
  const one = async (requestID) => {
    const headers = (streamType) => ({ streamType, port, requestID: String(requestID) })
    const error = await openStream(conn, headers('error'))
    error.end()
    const data = await openStream(conn, headers('data'))
    const results = Promise.all([collect(data), collect(error)])
    data.end(Buffer.from(payload))
    const [d, e] = await results
    return { data: d.toString(), error: e.toString() }
  }
  const connections = await Promise.all([...Array(count).keys()].map(one))
  socket.destroy()
  return { protocol, connections }
}

function forwardWs () {
  const offered = args.subprotocol.length ? args.subprotocol : ['v4.channel.k8s.io']
  const expect = Number(args['expect-bytes'] || Buffer.byteLength(payload))
  return new Promise((resolve, reject) => {
    const target = new URL(wsUrl(url))
    target.searchParams.append('port', port)
    const ws = new WebSocket(target.toString(), offered)
    const seen = { 0: 0, 1: 0 }
    const data = []
    const error = []
    let received = 0
    let base64 = false
    ws.on('unexpected-response', (req, res) => {
      let body = ''
      res.on('data', (d) => { body += d })
      res.on('end', () => reject(new Error(`HTTP ${res.statusCode}: ${body.trim()}`)))
    })
    ws.on('open', () => {
      base64 = ws.protocol.includes('base64')
      if (base64) ws.send('0' + Buffer.from(payload).toString('base64'))
      else ws.send(Buffer.concat([Buffer.from([0]), Buffer.from(payload)]))
    })
    ws.on('message', (msg, isBinary) => {
      let buf = Buffer.from(msg)
      if (!buf.length) return
      let channel = buf[0]
      buf = buf.subarray(1)
      if (!isBinary) {
        channel -= 48
        buf = Buffer.from(buf.toString(), 'base64')
      }
      // Each channel starts with the port number, two bytes little-endian.
      if (seen[channel] !== undefined && seen[channel]++ === 0) {
        if (buf.length < 2 || buf.readUInt16LE(0) !== Number(port)) {
          reject(new Error(`channel ${channel} did not start with port ${port}`))
        }
        buf = buf.subarray(2)
      }
      if (channel === 0) {
        data.push(buf)
        received += buf.length
        if (received >= expect) ws.close()
      } else if (channel === 1) {
        error.push(buf)
      }
    })
    ws.on('close', () => resolve({
      protocol: ws.protocol,
      connections: [{ data: Buffer.concat(data).toString(), error: Buffer.concat(error).toString() }]
    }))
    ws.on('error', reject)
  })
}

async function main () {
  const mode = args.protocol || 'spdy'
  const run = mode === 'ws' ? forwardWs() : forwardSpdy()
  const res = await Promise.race([run, deadline(timeoutMs, `port forward over ${mode}`)])
  if (args.json) return finish(0, JSON.stringify(res) + '\n')
  for (const c of res.connections) {
    if (c.error) process.stderr.write(c.error + '\n')
  }
  finish(0, res.connections.map((c) => c.data).join(''))
}

// Exits once `text` is flushed (process.exit alone may cut a piped stdout short).
function finish (code, text) {
  process.stdout.write(text, () => process.exit(code))
}

main().catch((e) => {
  process.stderr.write(`portforward.js: ${e.message}\n`)
  finish(4, args.json ? JSON.stringify({ failed: e.message }) + '\n' : '')
})
