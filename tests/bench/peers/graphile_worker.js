// graphile-worker side of the peers bench; run with NODE_PATH pointing at
// .bench-peers/graphile/node_modules (installed by tests/bench/peers/env.py).
//
//   node graphile_worker.js DSN CONCURRENCY TRACE
//
// Runs graphile-worker's own `run()` (it migrates its schema at start) with one task
// `noop`, at CONCURRENCY. With TRACE=1 each job prints `S <payload.k> <epoch seconds>`
// when it starts. Prints READY once the worker is listening. SIGTERM stops it gracefully.
"use strict";

const { run, Logger } = require("graphile-worker");

// Warnings and errors only (every worker in this bench logs at WARNING).
const quiet = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(message);
});
const { performance } = require("perf_hooks");

async function main() {
  const [dsn, concurrency, trace] = process.argv.slice(2);
  const tracing = trace === "1";
  const runner = await run({
    connectionString: dsn,
    concurrency: Number(concurrency),
    noHandleSignals: false,
    pollInterval: 2000,
    logger: quiet,
    taskList: {
      noop: async (payload) => {
        if (tracing) {
          const now = (performance.timeOrigin + performance.now()) / 1000;
          process.stdout.write(`S ${payload.k} ${now.toFixed(6)}\n`);
        }
      },
    },
  });
  process.stdout.write("READY\n");
  await runner.promise;
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
