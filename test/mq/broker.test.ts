import * as amqp from 'amqplib';
import { Broker, brokerTest } from '../helpers/rabbitmq.js';

const test = brokerTest();

// The harness itself: a private broker keeps its data directory across a restart. (What a broker
// killed with -9 keeps is the broker's business; test/mq/faults.test.ts checks that magnetar
// declares its queues again and delivers every update whatever it kept.)
test.serial('the private broker keeps a durable queue and a persistent message across a restart', async (t) => {
  const broker = await Broker.start();
  t.teardown(async () => broker.close());
  let connection = await amqp.connect(broker.url);
  try {
    const channel = await connection.createConfirmChannel();
    await channel.assertQueue('magnetar_probe', { durable: true });
    channel.sendToQueue('magnetar_probe', Buffer.from('{"probe":1}'), { persistent: true });
    await channel.waitForConfirms();
  } finally {
    await connection.close();
  }

  await broker.restart();
  t.true(broker.running);

  connection = await amqp.connect(broker.url);
  try {
    const channel = await connection.createConfirmChannel();
    // A missing queue closes the channel with an error event: seen here as the failed get.
    channel.on('error', () => undefined);
    const message = await channel.get('magnetar_probe', { noAck: true });
    t.not(message, false);
    if (message !== false) t.is(message.content.toString(), '{"probe":1}');
  } finally {
    await connection.close().catch(() => undefined);
  }

  await broker.kill9();
  t.false(broker.running);
});
