// A saga participant over RabbitMQ (amqplib) and Redis, written from docs/protocol.md alone.
//
// The protocol's obligations (section 5 of the document) live here; the
// business lives in the handlers passed in (see payment.js). Section
// numbers in the comments are the document's.

import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import amqp from 'amqplib';
import { createClient } from '@redis/client';

const MiB = 1024 * 1024;
// 5.10: the fifth failed delivery is dead-lettered, never requeued.
const DELIVERY_LIMIT = 5;
const TRANSIENT_ATTEMPTS = 3;

// A handler throws this to refuse a command: a failure reply, nothing happened (5.4).
export class Failure extends Error {
  constructor(code, message = '') {
    super(message ? `${code}: ${message}` : code);
    this.code = code;
    this.detail = message;
  }
}

class Malformed extends Error {}

// Its records are written with the Python SDK's Lua scripts (participants/lua): the same atomic steps (the reply
// given to a message_id; a step's lock and record) on keys of this participant's own.
const OWN_SCRIPTS = Object.fromEntries(['begin', 'finish', 'release'].map((name) => [name, new URL(`../../lua/${name}.lua`, import.meta.url)]));

export class Participant {
  // `scripts`: the handlers' own Lua scripts by name (file URLs), called with `script(name, keys, args)`.
  constructor({ name, handlers, scripts = {}, namespace = 'saga', amqpUrl, redisUrl, prefetch = 32, lockMs = 15000,
    retentionSeconds = 7 * 24 * 3600, maxBytes = MiB, log = console }) {
    this.name = name;
    this.handlers = handlers;
    this.ns = namespace;
    this.amqpUrl = amqpUrl;
    this.redisUrl = redisUrl;
    this.prefetch = prefetch;
    this.lockMs = lockMs;
    this.retentionSeconds = retentionSeconds;
    this.maxBytes = maxBytes;
    this.log = log;
    this.queue = `${namespace}.participant.${name}`;
    // 4.1 and 5.11: every publish carries the login as its user_id (the broker refuses any other).
    this.userId = loginUser(amqpUrl);
    this.inFlight = new Set();
    this.stopping = false;
    this.sources = Object.fromEntries(Object.entries({ ...scripts, ...OWN_SCRIPTS }).map(([n, url]) => [n, readFileSync(url, 'utf8')]));
    this.shas = {};
  }

  key(...parts) {
    // Under <ns>: so that removing a namespace removes this participant's records too.
    return [this.ns, 'participant', this.name, ...parts].join(':');
  }

  async start() {
    this.redis = createClient({ url: this.redisUrl });
    this.redis.on('error', (err) => this.log.error(`redis: ${err.message}`));
    await this.redis.connect();
    this.connection = await amqp.connect(this.amqpUrl);
    // No reconnection here: a lost broker connection ends the process, its
    // unacked commands go back to the queue, and the supervisor starts it again.
    this.connection.on('close', () => {
      if (!this.stopping) {
        this.log.error('the broker connection closed; exiting so that a supervisor restarts this participant');
        process.exit(1);
      }
    });
    this.connection.on('error', (err) => this.log.error(`amqp: ${err.message}`));
    // 1: every publish waits for the broker's confirm.
    this.publisher = await this.connection.createConfirmChannel();
    await this.declare();
    this.consumer = await this.connection.createChannel();
    await this.consumer.prefetch(this.prefetch);
    const { consumerTag } = await this.consumer.consume(this.queue, (msg) => this.track(msg), { noAck: false });
    this.consumerTag = consumerTag;
    this.log.info(`participant '${this.name}' (node) up: queue ${this.queue}, commands ${Object.keys(this.handlers).sort().join(', ')}`);
  }

  // 2.3: declare everything this participant uses, exactly as the orchestrator does, so either may start first.
  // Each on a channel of its own: a least-privilege user (5.11) may declare only its queue and bind nothing, and
  // the broker closes the channel of a refused declare; what it may not declare it uses as it exists.
  async declare() {
    const ns = this.ns;
    const exchange = (name, type) => (ch) => ch.assertExchange(name, type, { durable: true, autoDelete: false });
    const steps = [
      exchange(`${ns}.reply-exchange`, 'direct'),
      exchange(`${ns}.commands`, 'direct'),
      exchange(`${ns}.events`, 'topic'),
      exchange(`${ns}.dead`, 'topic'),
      (ch) => ch.assertQueue(`${ns}.dead-letters`, { durable: true, exclusive: false, autoDelete: false }),
      (ch) => ch.bindQueue(`${ns}.dead-letters`, `${ns}.dead`, '#'),
      (ch) => ch.assertQueue(this.queue, {
        durable: true,
        exclusive: false,
        autoDelete: false,
        arguments: { 'x-queue-type': 'quorum', 'x-dead-letter-exchange': `${ns}.dead`, 'x-delivery-limit': 10 },
      }),
      (ch) => ch.bindQueue(this.queue, `${ns}.commands`, this.name),
    ];
    for (const step of steps) {
      const channel = await this.connection.createChannel();
      channel.on('error', () => {}); // a refused declare closes its channel: the rejected call says why
      try {
        await step(channel);
      } catch (err) {
        if (!String(err.message).includes('ACCESS_REFUSED')) throw err;
        this.log.info(`${err.message}; using it as it is`);
      } finally {
        await channel.close().catch(() => {});
      }
    }
  }

  async stop() {
    this.stopping = true;
    if (this.consumerTag) await this.consumer.cancel(this.consumerTag).catch(() => {});
    await Promise.allSettled([...this.inFlight]);
    await this.connection?.close().catch(() => {});
    await this.redis?.close();
  }

  track(msg) {
    if (msg === null) return; // the broker cancelled the consumer (the queue was deleted)
    const done = this.onMessage(msg).finally(() => this.inFlight.delete(done));
    this.inFlight.add(done);
  }

  async onMessage(msg) {
    try {
      // 1: larger than the limit: dead-lettered unread.
      if (msg.content.length > this.maxBytes) {
        throw new Malformed(`message of ${msg.content.length} bytes exceeds the limit of ${this.maxBytes}`);
      }
      const command = decodeCommand(msg.content);
      await this.patiently(() => this.answer(command, msg));
      this.consumer.ack(msg);
    } catch (err) {
      if (err instanceof Malformed) return this.deadLetter(msg, err.message);
      // 5.10: a failure that may be the message's: requeue it, until its fifth delivery.
      const deliveries = deliveryCount(msg) + 1;
      if (deliveries < DELIVERY_LIMIT) {
        this.log.warn(`${this.queue}: processing failed, the message will be redelivered: ${err.message}`);
        return this.consumer.nack(msg, false, true);
      }
      return this.deadLetter(msg, `processing failed ${DELIVERY_LIMIT} times, the last time with ${err.message}`);
    }
  }

  // 5.10: an outage says nothing about the message: wait it out in place.
  async patiently(fn) {
    let delay = 100;
    for (;;) {
      try {
        return await fn();
      } catch (err) {
        if (!isOutage(err) || this.stopping) throw err;
        this.log.warn(`a service is away (${err.message}); trying again in ${delay} ms`);
        await sleep(delay);
        delay = Math.min(delay * 2, 2000);
      }
    }
  }

  // 5.1 to 5.8: one command, one reply; records first, then the reply, then (in onMessage) the ack.
  async answer(command, msg) {
    const tag = `{${command.saga_id}}`; // one Redis Cluster slot per saga
    const keys = [this.key('seen', tag, command.message_id), this.key('lock', tag, command.step), this.key('steps', tag, command.step)];
    const token = `${command.message_id}:${msg.fields.deliveryTag}:${randomBytes(6).toString('hex')}`;
    const giveUp = Date.now() + this.lockMs + 1000;
    let record;
    for (;;) {
      const begun = await this.script('begin', keys, [token, String(this.lockMs)]);
      if (begun[0] === 'cached') return this.send(command, begun[1], msg); // 5.2
      if (begun[0] === 'run') {
        record = pairs(begun.slice(1));
        break;
      }
      // 5.1.4: another delivery of this step is being answered; wait for it (or for its lease to run out).
      if (Date.now() > giveUp) throw new Error(`step ${command.step} of saga ${command.saga_id} stayed locked`);
      await sleep(50);
    }
    let reply;
    let fields;
    try {
      [reply, fields] = await this.decide(command, record);
    } catch (err) {
      await this.script('release', keys.slice(1, 2), [token]).catch(() => {});
      throw err;
    }
    const body = JSON.stringify(reply);
    await this.script('finish', keys, [token, String(this.retentionSeconds), body, ...Object.entries(fields).flat()]);
    return this.send(command, body, msg);
  }

  async decide(command, record) {
    const ctx = { command, payload: command.payload, key: `${command.saga_id}:${command.step}`, participant: this };
    if (command.action === 'do') {
      if (record.compensated) return [this.reply(command, new Failure('compensated', 'the step was compensated already')), {}]; // 5.5
      if (record.do === 'success') return [this.reply(command, JSON.parse(record.data ?? '{}')), {}]; // 5.3
      if (command.deadline != null && Date.now() / 1000 > command.deadline) {
        // 5.7: not started, and nothing recorded: a later attempt in time runs.
        const late = (Date.now() / 1000 - command.deadline).toFixed(3);
        return [this.reply(command, new Failure('deadline_exceeded', `arrived ${late}s past its deadline; not started`)), {}];
      }
      const outcome = await this.call(command, ctx);
      if (outcome instanceof Failure) {
        // 5.6: after a crash the action may have happened in part: say so, and remember it for the compensation.
        const unknown = outcome.code === 'outcome_unknown' || record.do === 'unknown';
        return [this.reply(command, outcome), { do: unknown ? 'unknown' : 'failure' }];
      }
      return [this.reply(command, outcome), { do: 'success', data: JSON.stringify(outcome) }];
    }
    if (record.compensated) return [this.reply(command, {}), {}];
    // 5.5: nothing happened to undo; recording it refuses the action should it arrive late.
    if (record.do !== 'success' && record.do !== 'unknown') return [this.reply(command, {}), { compensated: '1' }];
    // 5.7.4: a compensation runs whatever its deadline.
    const outcome = await this.call(command, ctx);
    if (outcome instanceof Failure) return [this.reply(command, outcome), {}];
    return [this.reply(command, outcome), { compensated: '1' }];
  }

  // The handler's answer: its data, or a Failure (5.4, 5.6, 5.8).
  async call(command, ctx) {
    const handler = this.handlers[command.command];
    if (!handler) return new Failure('unknown_command', `participant '${this.name}' has no handler for '${command.command}'`);
    let delay = 100;
    for (let attempt = 1; ; attempt++) {
      try {
        const data = (await handler(ctx)) ?? {};
        return data;
      } catch (err) {
        if (err instanceof Failure) return err;
        this.log.warn(`${this.name} ${command.command} attempt ${attempt}: ${err.message}`);
        if (attempt === TRANSIENT_ATTEMPTS) return new Failure('outcome_unknown', `${err.name}: ${err.message}`);
        await sleep(delay);
        delay *= 2;
      }
    }
  }

  // 3.4
  reply(command, outcome) {
    const failed = outcome instanceof Failure;
    return {
      message_id: `${command.message_id}/${this.name}`,
      in_reply_to: command.message_id,
      saga_id: command.saga_id,
      step: command.step,
      action: command.action,
      outcome: failed ? 'failure' : 'success',
      data: failed ? {} : outcome,
      error: failed ? { code: outcome.code, message: outcome.detail } : null,
      participant: this.name,
    };
  }

  // 5.1.2 and 4.1: to the body's reply_to, persistent JSON, confirmed, with the command's trace context.
  async send(command, body, msg) {
    const incoming = msg.properties.headers ?? {};
    const trace = Object.fromEntries(['traceparent', 'tracestate'].filter((h) => typeof incoming[h] === 'string').map((h) => [h, incoming[h]]));
    // 5.1.2: through the replies exchange, the one a least-privilege user may write replies to (5.11).
    const exchange = command.reply_to === `${this.ns}.replies` ? `${this.ns}.reply-exchange` : '';
    await this.publish(exchange, command.reply_to, Buffer.from(body), {
      messageId: `${command.message_id}/${this.name}`,
      correlationId: command.saga_id,
      type: 'Reply',
      headers: trace,
    });
  }

  // 5.9 and 3.7: the body unchanged, the reason in a header, confirmed, then acked.
  async deadLetter(msg, reason) {
    this.log.warn(`${this.queue}: dead-lettering message ${msg.properties.messageId}: ${reason}`);
    try {
      await this.publish(`${this.ns}.dead`, this.queue, msg.content, {
        messageId: msg.properties.messageId,
        correlationId: msg.properties.correlationId,
        type: msg.properties.type,
        headers: {
          'x-saga-reason': reason.slice(0, 1000),
          'x-saga-queue': this.queue,
          'x-saga-deliveries': deliveryCount(msg) + 1,
          ...(sagaOf(msg) ? { 'x-saga-id': sagaOf(msg) } : {}),
        },
      });
      this.consumer.ack(msg);
      // 5.9: counted where the orchestrator counts its own.
      await this.redis.sendCommand(['HINCRBY', `${this.ns}:counters`, `dead_letters:${this.queue}`, '1']).catch(() => {});
    } catch (err) {
      this.log.error(`dead-lettering failed (${err.message}); the message will be redelivered`);
      this.consumer.nack(msg, false, true);
    }
  }

  publish(exchange, routingKey, content, options) {
    return new Promise((resolve, reject) => {
      const properties = { contentType: 'application/json', persistent: true, userId: this.userId, ...options };
      this.publisher.publish(exchange, routingKey, content, properties,
        (err) => (err ? reject(err) : resolve()));
    });
  }

  async script(name, keys, args) {
    const call = async () => {
      this.shas[name] ??= await this.redis.sendCommand(['SCRIPT', 'LOAD', this.sources[name]]);
      return this.redis.sendCommand(['EVALSHA', this.shas[name], String(keys.length), ...keys, ...args]);
    };
    try {
      return await call();
    } catch (err) {
      if (!String(err.message).startsWith('NOSCRIPT')) throw err;
      delete this.shas[name]; // Redis restarted and forgot it
      return call();
    }
  }
}

// amqplib logs in with the URL's user (PLAIN), or guest without one.
function loginUser(url) {
  try {
    return decodeURIComponent(new URL(url).username) || 'guest';
  } catch {
    return undefined; // not a URL amqplib would take either: connect() says so
  }
}

// 3.1 and 3.3: strict, unknown fields ignored.
export function decodeCommand(content) {
  let value;
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(content));
  } catch (err) {
    throw new Malformed(`not a valid Command: not JSON (${err.message})`);
  }
  if (!isObject(value)) throw new Malformed('not a valid Command: not a JSON object');
  for (const field of ['message_id', 'saga_id', 'saga_type', 'step', 'command', 'reply_to']) {
    if (typeof value[field] !== 'string') throw new Malformed(`not a valid Command: ${field} must be a string`);
  }
  // 3.1: bounded, since they become Redis keys here too.
  if (!SAGA_ID.test(value.saga_id)) throw new Malformed('not a valid Command: saga_id is out of bounds');
  if (!NAME.test(value.step)) throw new Malformed('not a valid Command: step is out of bounds');
  if (value.message_id.length > 255) throw new Malformed('not a valid Command: message_id is longer than 255');
  if (value.action !== 'do' && value.action !== 'compensate') {
    throw new Malformed('not a valid Command: action must be "do" or "compensate"');
  }
  if (!Number.isInteger(value.attempt) || value.attempt < 1) {
    throw new Malformed('not a valid Command: attempt must be an integer of at least 1');
  }
  if (!isObject(value.payload)) throw new Malformed('not a valid Command: payload must be an object');
  if (value.deadline != null && !Number.isFinite(value.deadline)) {
    throw new Malformed('not a valid Command: deadline must be a number or null');
  }
  return value;
}

const SAGA_ID = /^[A-Za-z0-9_:@+=~/-]{1,128}$/;
const NAME = /^[A-Za-z0-9_-]{1,64}$/;

// 3.7: the saga a refused message belongs to, where its body or correlation_id says and it is a saga id (3.1).
function sagaOf(msg) {
  let id = msg.properties.correlationId;
  try {
    const body = JSON.parse(msg.content.toString('utf8'));
    if (typeof body?.saga_id === 'string') id = body.saga_id;
  } catch {
    // not JSON: the correlation_id is all there is
  }
  return typeof id === 'string' && SAGA_ID.test(id) ? id : undefined;
}

function isObject(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

// 5.10: quorum queues count earlier deliveries; absent on the first.
function deliveryCount(msg) {
  const count = msg.properties.headers?.['x-delivery-count'];
  return Number.isInteger(count) ? count : 0;
}

function isOutage(err) {
  const names = ['ClientClosedError', 'ClientOfflineError', 'SocketClosedUnexpectedlyError', 'ConnectionTimeoutError',
    'ReconnectStrategyError', 'IllegalOperationError'];
  return names.includes(err?.constructor?.name) || ['ECONNREFUSED', 'ECONNRESET', 'EPIPE'].includes(err?.code);
}

function pairs(flat) {
  const out = {};
  for (let i = 0; i < flat.length; i += 2) out[String(flat[i])] = String(flat[i + 1]);
  return out;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
