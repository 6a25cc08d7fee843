// The payment participant in Node.js: charges a customer's card within a credit limit, and refunds.
//
//   SAGA_NAMESPACE=saga node payment.js
//
// Its books are kept in the same Redis keys as the Python example
// (participants/examples/payment.py), so either can take over from the other.

import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Failure, Participant } from './participant.js';

// Each new customer's card may carry this much, in cents.
const CREDIT_LIMIT = 1_000_000_00;

export function payment(options) {
  // The books are the Python example's, kept with its scripts (participants/examples/lua).
  const scripts = { take: new URL('../lua/take.lua', import.meta.url), give_back: new URL('../lua/give_back.lua', import.meta.url) };
  const participant = new Participant({ name: 'payment', handlers: { charge, refund }, scripts, ...options });
  // One hash tag for the three keys, so that the scripts run on Redis Cluster too (statemachines/names.py, book_key).
  const book = () => `{${participant.ns}:payment:credit}`;
  const books = () => ['', ':taken', ':returned'].map((part) => participant.key(book() + part));

  async function charge(ctx) {
    refuseIfAsked(ctx);
    const { customer_id: customer, amount } = ctx.payload;
    if (typeof customer !== 'string' || !Number.isInteger(amount) || amount < 0) {
      throw new Failure('bad_payload', 'charge needs customer_id (a string) and amount (whole cents)');
    }
    // 1: charged (now or before); 0: refunded already (a late charge); otherwise the customer short of credit.
    const charged = await participant.script('take', books(), [ctx.key, String(CREDIT_LIMIT), customer, String(amount)]);
    if (charged === 0) throw new Failure('compensated', 'this step was refunded already');
    if (charged !== 1) throw new Failure('card_declined', `not enough credit for ${customer}`);
    return { charge_id: ctx.key };
  }

  async function refund(ctx) {
    await participant.script('give_back', books(), [ctx.key]);
  }

  return participant;
}

// Fail when the saga data lists this step in fail_at, so that every path can be driven by hand.
function refuseIfAsked(ctx) {
  const failAt = ctx.payload.fail_at;
  if (Array.isArray(failAt) && failAt.includes(ctx.command.step)) {
    throw new Failure('asked_to_fail', `fail_at lists '${ctx.command.step}'`);
  }
}

if (fileURLToPath(import.meta.url) === resolve(process.argv[1] ?? '')) {
  const participant = payment({
    namespace: process.env.SAGA_NAMESPACE || 'saga',
    amqpUrl: process.env.SAGA_AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/',
    redisUrl: process.env.SAGA_REDIS_URL || 'redis://127.0.0.1:6379/0',
  });
  const stop = async () => {
    await participant.stop();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  try {
    await participant.start();
  } catch (err) {
    console.error(`payment: cannot start: ${err.message}`);
    process.exit(3);
  }
}
