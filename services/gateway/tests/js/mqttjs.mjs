// The seed article's mqtt.js example over WebSocket: a Last Will, a QoS 1 subscription, a QoS 1 publish.
// Usage: node mqttjs.mjs ws://127.0.0.1:PORT/mqtt [4|5]
// Prints one JSON line per step for the Rust test that runs it; after the first message it drops
// its connection without DISCONNECT, as a closed laptop would, so that the broker publishes the Last Will.
import mqtt from 'mqtt';

const [url, version = '4'] = process.argv.slice(2);
const say = (event, fields = {}) => process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');
const fail = (message) => process.stdout.write(JSON.stringify({ event: 'fail', message }) + '\n', () => process.exit(1));

if (!url) fail('usage: node mqttjs.mjs ws://host:port/mqtt [4|5]');
// Bounded: the test waits for outcomes, and this makes sure the script never outlives it.
setTimeout(() => fail('timed out after 90 s'), 90_000).unref();

const clientId = 'web-client-' + Math.random().toString(16).substr(2, 8);
const client = mqtt.connect(url, {
  clientId,
  clean: true,
  reconnectPeriod: 1000,
  protocolVersion: Number(version),
  will: { topic: 'clients/web-client/status', payload: 'offline', qos: 1, retain: true },
});

client.on('connect', () => {
  say('connected', { clientId });
  client.subscribe('sensors/+/temperature', { qos: 1 }, (error, granted) => {
    if (error) return fail(`subscribe failed: ${error.message}`);
    say('subscribed', { granted: granted.map(({ topic, qos }) => ({ topic, qos })) });
    client.publish('control/lights/living-room', JSON.stringify({ state: 'on', brightness: 80 }), { qos: 1 }, (error) => {
      if (error) return fail(`publish failed: ${error.message}`);
      say('published');
    });
  });
});

client.on('message', (topic, message, packet) => {
  say('message', { topic, payload: message.toString(), qos: packet.qos });
  // Gone without a DISCONNECT packet: the socket just closes.
  client.options.reconnectPeriod = 0;
  client.stream.destroy();
  process.stdout.write('', () => process.exit(0));
});

client.on('error', (error) => fail(`mqtt error: ${error.message}`));
