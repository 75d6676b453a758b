/** `brokerTest`: the message-queue tests' gate. The broker itself is test/helpers/broker.ts. */
import test, { type TestFn } from 'ava';
import { brokerUnavailable } from './broker.js';

export { Broker, brokerUnavailable, type BrokerOptions } from './broker.js';

/**
 * `test` when a broker can be started here. Otherwise: in CI (CI=true) every test registered through
 * it fails with the reason; elsewhere they are skipped and the reason is printed once.
 */
export function brokerTest(): TestFn {
  const reason = brokerUnavailable();
  if (reason === undefined) return test;
  if (process.env['CI'] === 'true') {
    const failing = ((title: string) => test(title, (t) => t.fail(`RabbitMQ is required in CI: ${reason}`))) as unknown as TestFn;
    return Object.assign(failing, { serial: failing }) as TestFn;
  }
  console.log(`# skipping message-queue tests: ${reason}`);
  return test.skip as unknown as TestFn;
}
