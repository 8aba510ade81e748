// Evaluates flags with the official Unleash Node SDK against a running turnout server.
// Usage: node evaluate.js URL TOKEN FLAGS_FILE CONTEXTS_FILE OUT_FILE
//   FLAGS_FILE: a JSON list of flag names; CONTEXTS_FILE: one JSON context per line.
// Writes to OUT_FILE one JSON line per context: [[enabled, variantName, variantEnabled, payload], ...]
// in the order of FLAGS_FILE. Exits 1 if the SDK cannot sync within 15 seconds.
'use strict';
const fs = require('fs');
const { initialize, InMemStorageProvider } = require('unleash-client');

const [url, token, flagsFile, contextsFile, outFile] = process.argv.slice(2);
const flags = JSON.parse(fs.readFileSync(flagsFile, 'utf8'));
const contexts = fs.readFileSync(contextsFile, 'utf8').split('\n').filter((l) => l).map(JSON.parse);

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
  for (const context of contexts) {
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
