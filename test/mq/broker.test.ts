import * as amqp from 'amqplib';
import { Broker, brokerTest } from '../helpers/rabbitmq.js';

const test = brokerTest();

test.serial('the private broker keeps a durable queue and a persistent message across a kill -9', async (t) => {
  const broker = await Broker.start();
  t.teardown(async () => broker.close());
  let connection = await amqp.connect(broker.url);
  let channel = await connection.createConfirmChannel();
  await channel.assertQueue('magnetar_probe', { durable: true });
  channel.sendToQueue('magnetar_probe', Buffer.from('{"probe":1}'), { persistent: true });
  await channel.waitForConfirms();
  await connection.close();

  await broker.kill9();
  t.false(broker.running);
  await broker.start();

  connection = await amqp.connect(broker.url);
  channel = await connection.createConfirmChannel();
  const message = await channel.get('magnetar_probe', { noAck: true });
  await connection.close();
  t.not(message, false);
  if (message !== false) t.is(message.content.toString(), '{"probe":1}');
});
