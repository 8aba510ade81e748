// Evaluates flags with the official Unleash Node SDK against a running turnout server.
// Usage: node evaluate.js URL TOKEN CASES_FILE OUT_FILE
//   CASES_FILE: one JSON line per case, {"flags": [names], "context": {...}}.
// Writes to OUT_FILE one JSON line per case: [[enabled, variantName, variantEnabled, payload], ...]
// in the order of the case's flags. Exits 1 if the SDK cannot sync within 15 seconds.
'use strict';
const fs = require('fs');
const { initialize, InMemStorageProvider } = require('unleash-client');

const [url, token, casesFile, outFile] = process.argv.slice(2);
const cases = fs.readFileSync(casesFile, 'utf8').split('\n').filter((l) => l).map(JSON.parse);

const client = initialize({
  url,
  appName: 'turnout-e2e-node',
  customHeaders: { Authorization: token },
  disableMetrics: true,
  refreshInterval: 60000,
  storageProvider: new InMemStorageProvider(),
});
const timer = setTimeout(() => {
  process.stderr.write('unleash-client did not synchronize within 15 s\n');
  process.exit(1);
}, 15000);
client.on('error', (err) => process.stderr.write(`unleash-client error: ${err}\n`));
client.on('synchronized', () => {
  clearTimeout(timer);
  const out = [];
  for (const { flags, context } of cases) {
    const row = flags.map((name) => {
      const v = client.getVariant(name, context);
      return [client.isEnabled(name, context), v.name, v.enabled, v.payload ?? null];
    });
    out.push(JSON.stringify(row));
  }
  fs.writeFileSync(outFile, out.join('\n') + '\n');
  client.destroy();
  process.exit(0);
});
