import test from 'ava';
import { JOB_STATES, TERMINAL_STATES, canTransition, isTerminal, wireStatus } from '../../src/jobs/state.js';

test('terminal states are sinks; every other state can fail, and can be lost after a restart', (t) => {
  for (const from of JOB_STATES) {
    for (const to of JOB_STATES) {
      if (isTerminal(from)) t.false(canTransition(from, to), `${from} -> ${to}`);
    }
    if (!isTerminal(from)) {
      t.true(canTransition(from, 'failed'), `${from} -> failed`);
      t.true(canTransition(from, 'lost'), `${from} -> lost`);
    }
  }
  t.deepEqual([...TERMINAL_STATES].sort(), ['cancelled', 'complete', 'failed', 'lost']);
});

test('the lifecycle runs forward only: uploads close before authorization, results are postprocessed before complete', (t) => {
  t.true(canTransition('setup', 'preprocessing'));
  t.false(canTransition('setup', 'queued'), 'no job is queued without preprocessing (authorization)');
  t.true(canTransition('preprocessing', 'queued'));
  t.false(canTransition('running', 'queued'));
  t.false(canTransition('running', 'complete'), 'complete only through postprocessing');
  t.true(canTransition('queued', 'postprocessing'), 'a job that ended before anyone saw it run');
  t.false(canTransition('postprocessing', 'cancelled'), 'postprocessing is not cancelled half-way');
  t.is(wireStatus('setup'), 'preprocessing');
  t.is(wireStatus('preprocessing'), 'preprocessing');
  t.is(wireStatus('postprocessing'), 'postprocessing');
});
