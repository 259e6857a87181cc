// The same sequential job with node-hl7-client (installed at run time by scripts/compare-send,
// never kept in the repository): sends every message of FILE (messages separated by blank
// lines) one at a time, the next when the previous one's ACK has arrived. Prints the time
// from the first send to the last ACK, in seconds.
//
//     node node_send.mjs PORT FILE
import Client, { Message } from "node-hl7-client";
import { readFileSync } from "node:fs";

const [port, file] = [Number(process.argv[2]), process.argv[3]];
const messages = readFileSync(file, "utf8").split(/\n\s*\n/).map((m) => m.trim().replace(/\r?\n/g, "\r")).filter((m) => m);
const version = messages[0].split("\r")[0].split("|")[11];
const client = new Client({ host: "127.0.0.1", version });
let next = 0;
const start = process.hrtime.bigint();
const conn = client.createConnection({ port }, async () => {
  if (next < messages.length) {
    await conn.sendMessage(new Message({ text: messages[next++] }));
    return;
  }
  console.log((Number(process.hrtime.bigint() - start) / 1e9).toFixed(4));
  await conn.close();
  process.exit(0);
});
await conn.sendMessage(new Message({ text: messages[next++] }));
