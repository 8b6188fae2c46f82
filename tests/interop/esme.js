// An independent ESME (node-smpp): binds as transceiver, receives N deliver_sm, acks them,
// prints one JSON line per message, then unbinds and exits.
// usage: node esme.js HOST PORT N
const smpp = require('smpp');
const [host, port, n] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
const session = smpp.connect({ url: `smpp://${host}:${port}` });
let got = 0;
const timer = setTimeout(() => { console.log(JSON.stringify({ error: 'timeout', got })); process.exit(2); }, 20000);
session.bind_transceiver({ system_id: 'node-esme', password: 'pw' }, (pdu) => {
  console.log(JSON.stringify({ bound: pdu.command_status }));
});
session.on('deliver_sm', (pdu) => {
  session.send(pdu.response());
  const text = Buffer.isBuffer(pdu.short_message) ? pdu.short_message.toString('latin1')
    : (pdu.short_message && pdu.short_message.message) || String(pdu.short_message);
  console.log(JSON.stringify({ from: pdu.source_addr, to: pdu.destination_addr, text }));
  got += 1;
  if (got === n) {
    clearTimeout(timer);
    session.unbind(() => { session.close(); process.exit(0); });
  }
});
session.on('error', (e) => { console.log(JSON.stringify({ error: String(e) })); process.exit(3); });
