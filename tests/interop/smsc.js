// An independent SMSC (node-smpp): accepts one bind, sends N deliver_sm, prints the acks as
// JSON lines, answers submit_sm, and exits after it has seen the unbind.
// usage: node smsc.js N
const smpp = require('smpp');
const n = Number(process.argv[2]);
let acked = 0;
const server = smpp.createServer((session) => {
  session.on('bind_transceiver', (pdu) => {
    session.send(pdu.response());
    console.log(JSON.stringify({ bound: pdu.system_id }));
    for (let i = 1; i <= n; i++) {
      session.deliver_sm({
        source_addr: '447700900123', destination_addr: '12345',
        short_message: `NODE ${i}`,
      }, (resp) => {
        acked += 1;
        console.log(JSON.stringify({ ack: i, status: resp.command_status }));
      });
    }
  });
  session.on('submit_sm', (pdu) => {
    session.send(pdu.response({ message_id: 'abc123' }));
    console.log(JSON.stringify({ submit: pdu.destination_addr }));
  });
  session.on('enquire_link', (pdu) => session.send(pdu.response()));
  session.on('unbind', (pdu) => {
    session.send(pdu.response());
    console.log(JSON.stringify({ unbind: true, acked }));
    setTimeout(() => process.exit(0), 50);
  });
});
server.listen(0, '127.0.0.1', () => {
  console.log(JSON.stringify({ port: server.address().port }));
});
setTimeout(() => { console.log(JSON.stringify({ error: 'timeout' })); process.exit(2); }, 20000);
