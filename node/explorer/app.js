// gpumesh explorer: renders the peer's snapshots, streamed as Server-Sent
// Events from explorer/events. Plain DOM, no dependencies. Everything shown
// is set as text (never as HTML): names and agents come from other peers.
'use strict';

(function () {
  const MAX_POINTS = 360 * 8; // the server keeps 360 samples; a few classes each
  const COLORS = ['#0f766e', '#7c3aed', '#c2410c', '#2563eb', '#be185d', '#4d7c0f', '#0369a1', '#a16207'];

  let state = null;
  let history = [];
  let lastUpdate = null;

  const $ = (id) => document.getElementById(id);

  // el makes an element: el('td', {class: 'num', title: 'x'}, 'text', child, ...).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k.startsWith('data-')) e.setAttribute(k, String(v));
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  // row makes a table row whose cells carry their column's label, for the
  // stacked layout of narrow screens.
  function row(table, cells, attrs) {
    const labels = [...$(table).closest('table').querySelectorAll('thead th')].map((th) => th.textContent);
    return el('tr', attrs, cells.map((c, i) => {
      const cell = c !== null && typeof c === 'object' && !(c instanceof Node) ? c : { cell: c };
      return el('td', { 'data-label': labels[i] || '', class: cell.class, title: cell.title }, el('span', {}, cell.cell));
    }));
  }

  function fill(id, rows, emptyId) {
    $(id).replaceChildren(...rows);
    if (emptyId) $(emptyId).hidden = rows.length > 0;
  }

  function short(id) {
    if (!id) return '';
    return id.length > 14 ? id.slice(0, 6) + '…' + id.slice(-6) : id;
  }

  function shortHex(h) {
    return h ? h.slice(0, 8) + '…' : '';
  }

  // amount formats an integer of a unit's smallest parts: 2100000 at 6
  // decimals is 2.10 (at least two decimals, no trailing zeros past them).
  function amount(v, decimals) {
    if (v === undefined || v === null) return '';
    if (!decimals) return String(v);
    const s = String(Math.round(v)).padStart(decimals + 1, '0');
    let frac = s.slice(-decimals).replace(/0+$/, '');
    const keep = Math.min(2, decimals);
    if (frac.length < keep) frac = frac.padEnd(keep, '0');
    return s.slice(0, -decimals) + '.' + frac;
  }

  function parseUnit(u) {
    const [token, dec] = String(u || '').split(':');
    return { token: token || '', decimals: Number(dec) || 0 };
  }

  function price(v) {
    if (!v) return '—';
    return amount(v, state.prices.decimals);
  }

  function ago(t) {
    if (!t) return '';
    const s = Math.max(0, Math.round((Date.now() - new Date(t).getTime()) / 1000));
    return duration(s) + ' ago';
  }

  function duration(s) {
    s = Math.round(s);
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
    if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
    return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
  }

  function clock(t) {
    return new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  }

  // queueLeft is how long a queued job may still wait for a cluster.
  function queueLeft(until) {
    const s = Math.max(0, (new Date(until).getTime() - Date.now()) / 1000);
    return duration(s) + ' left to wait';
  }

  // size is a byte count in B, KiB, MiB or GiB.
  function size(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + ' ' + units[i];
  }

  function badge(s, cls) {
    return el('span', { class: 'badge ' + (cls || s) }, s);
  }

  function mono(text, title) {
    return el('span', { class: 'mono', title: title || text }, text);
  }

  // --- sections -----------------------------------------------------------

  function renderPeer() {
    const p = state.peer;
    const kv = [
      ['Peer ID', mono(p.peerID)],
      ['Solana address', mono(p.solanaAddress)],
      ['Swarm', el('span', {}, p.swarm + ' ', p.private ? badge('private') : badge('public', 'idle'))],
      ['Version', p.version],
      ['Uptime', el('span', { id: 'uptime' }, duration((Date.now() - new Date(p.started).getTime()) / 1000))],
    ];
    if (p.region) kv.push(['Region', p.region]);
    if (p.executors && p.executors.length) kv.push(['Executors', p.executors.join(', ')]);
    $('peer-kv').replaceChildren(...kv.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
    const gpus = p.gpus || [];
    $('peer-gpus').replaceChildren(gpus.length
      ? el('div', { class: 'chips' }, gpus.map((g) => el('span', { class: 'chip', 'data-class': g.class },
        `${g.gpus}× ${g.class}`,
        g.free !== undefined ? ` · ${g.free} free` : '',
        g.ask ? ` · asks ${price(g.ask)} ${state.prices.token}/GPU-h` : '')))
      : el('p', { class: 'meta' }, 'This peer offers no GPUs.'));
    $('peer-addrs').replaceChildren(...(p.addrs || []).map((a) => el('li', {}, a)));
    document.title = 'gpumesh · ' + short(p.peerID);
  }

  function renderPeers() {
    const peers = state.peers || [];
    $('peers-count').textContent = peers.length ? String(peers.length) : '';
    fill('peers-body', peers.map((p) => row('peers-body', [
      mono(short(p.peerID), p.peerID),
      p.direction,
      p.agent || '—',
      { cell: p.latencyMs ? p.latencyMs.toFixed(1) + ' ms' : '—', class: 'num' },
      mono((p.addrs || [])[0] || ''),
    ], { 'data-peer': p.peerID })), 'peers-empty');
  }

  function renderGPUs() {
    const d = state.directory;
    const classes = d.classes || [];
    $('gpus-count').textContent = classes.length ? `${d.gpus} available from ${d.providers} provider${d.providers === 1 ? '' : 's'}` : '';
    fill('gpus-body', classes.map((c) => row('gpus-body', [
      el('span', {}, el('strong', {}, c.class), ' ', el('span', { class: 'meta' }, `${c.model} · ${c.vramGB} GB`)),
      { cell: c.providers, class: 'num' },
      { cell: c.total, class: 'num' },
      { cell: c.available, class: 'num' },
      { cell: c.free !== undefined ? c.free : '—', class: 'num', title: 'known for this peer\'s own GPUs only' },
      { cell: c.cheapest ? `${amount(c.cheapest, parseUnit(c.unit).decimals)} ${parseUnit(c.unit).token}/GPU-h` : '—', class: 'num' },
    ], { 'data-class': c.class })), 'gpus-empty');
    let meta = '';
    if (d.searched) meta = `Directory searched ${ago(d.searched)} in ${d.elapsedMs ? d.elapsedMs.toFixed(0) : 0} ms${d.partial ? ' (partial)' : ''}; every 10 s while this page is open.`;
    else meta = 'Searching the directory…';
    if (d.error) meta += ' Last search: ' + d.error;
    $('gpus-meta').textContent = meta;
  }

  function renderPrices() {
    const p = state.prices;
    $('prices-unit').textContent = `${p.token}/GPU-h`;
    fill('prices-body', (p.classes || []).map((q) => row('prices-body', [
      el('strong', {}, q.class),
      { cell: price(q.best), class: 'num' },
      { cell: price(q.median), class: 'num' },
      { cell: price(q.mean), class: 'num' },
      { cell: price(q.ewma), class: 'num' },
      { cell: q.gpus, class: 'num' },
      { cell: `${q.counted}/${q.providers}` + (q.counted < q.providers ? ' · new' : ''), class: 'num', title: 'counted in the index / quoting: a new provider counts after 2 minutes of probation' },
    ], { 'data-class': q.class })), 'prices-empty');
    const asks = (p.asks || []).map((a) => `${a.class} ${price(a.ask)} for ${a.available} GPUs`);
    let meta = asks.length ? `This peer asks ${asks.join(', ')}` + (p.policy ? ` (policy ${p.policy}).` : '.') : 'This peer quotes no price.';
    meta += ` Board: ${p.gossip ? p.gossip.delivered : 0} ticks taken, ${p.gossip ? p.gossip.mesh : 0} peers in the topic mesh.`;
    if ((p.classes || []).some((q) => q.counted < q.providers)) meta += ' Best and GPUs show every ask at once; a new provider counts in median and mean after 2 minutes of probation.';
    $('prices-meta').textContent = meta;
  }

  function renderJobs() {
    const jobs = state.jobs || [];
    $('jobs-count').textContent = jobs.length ? (state.jobsTotal > jobs.length ? `${jobs.length} newest of ${state.jobsTotal}` : String(jobs.length)) : '';
    $('jobs-list').replaceChildren(...jobs.map((j) => {
      const u = parseUnit(j.unit);
      const facts = [
        el('span', { class: 'mono', title: j.id }, short(j.id)),
        `${j.gpus}× ${j.model || 'GPU'}`,
        j.image ? el('span', { title: j.image }, 'image ' + j.image) : 'process',
        j.launcher && j.launcher !== 'none' ? 'launcher ' + j.launcher : null,
        j.cost ? `costs ${amount(j.cost, u.decimals)} ${u.token}/h` : null,
        'submitted ' + clock(j.created),
        j.ended ? `ran ${duration((new Date(j.ended) - new Date(j.started || j.created)) / 1000)}` : null,
        j.attempt ? `attempt ${j.attempt + 1}` : null,
        j.state === 'queued' ? el('span', { class: 'queue-left', 'data-until': j.queuedUntil }, queueLeft(j.queuedUntil)) : null,
        j.state === 'queued' && j.queue ? `queue ${j.queue}` : null,
        j.state === 'queued' && j.tries ? `tried again ${j.tries}×` : null,
        j.state === 'queued' && j.position ? el('span', { class: 'queue-position' }, `position ${j.position} in this peer's queue`) : null,
      ].filter(Boolean).map((f) => el('span', {}, f));
      const members = j.members || [];
      const table = members.length ? el('div', { class: 'scroll' }, el('table', { class: 'stack' },
        el('thead', {}, el('tr', {}, ['#', 'Provider', 'Class', 'GPUs', 'State', 'Exit', 'Receipt'].map((h) => el('th', {}, h)))),
        el('tbody', {}, members.map((m) => el('tr', { 'data-rank': m.rank, 'data-state': m.state },
          el('td', { 'data-label': '#' }, el('span', {}, m.rank)),
          el('td', { 'data-label': 'Provider' }, mono(short(m.provider), m.provider)),
          el('td', { 'data-label': 'Class' }, el('span', {}, m.class + (m.zone ? ' · ' + m.zone : ''))),
          el('td', { 'data-label': 'GPUs', class: 'num' }, el('span', {}, m.gpus)),
          el('td', { 'data-label': 'State' }, badge(m.state, m.state === 'exited' && m.exitCode ? 'bad' : m.state)),
          el('td', { 'data-label': 'Exit', class: 'num' }, el('span', {}, m.exitCode !== undefined ? m.exitCode : '—')),
          el('td', { 'data-label': 'Receipt' }, el('span', { title: m.error || '' }, m.error ? m.error : (m.receipt || '—'))),
        ))))) : null;
      return el('article', { class: 'job', 'data-job': j.id, 'data-state': j.state },
        el('div', { class: 'job-head' },
          el('span', { class: 'job-name' }, j.name || short(j.id)), badge(j.state),
          j.exitCode !== undefined ? el('span', { class: 'meta' }, 'exit code ' + j.exitCode) : null),
        el('div', { class: 'job-facts' }, facts),
        j.reason ? el('p', { class: 'reason ' + j.state }, (j.state === 'queued' ? 'waits for a cluster: ' : '') + j.reason) : null,
        forwards(j.forwards || []),
        table);
    }));
    $('jobs-empty').hidden = jobs.length > 0;
  }

  // forwards lists a job's open port-forwards: where each listens, the
  // member's port, its connections and bytes.
  function forwards(fs) {
    if (!fs.length) return null;
    return el('ul', { class: 'forwards' }, fs.map((f) => el('li', { 'data-local': f.local, 'data-port': f.port },
      el('span', { class: 'mono' }, f.local || '?'), ` → member ${f.rank} port ${f.port}: `,
      el('span', { class: 'forward-conns' }, `${f.conns} open`), `, ${f.total} in all, `,
      el('span', { class: 'forward-bytes', title: `${f.bytesIn} bytes from the member, ${f.bytesOut} to it` }, `${size(f.bytesIn)} in, ${size(f.bytesOut)} out`),
      `, since ${clock(f.since)}`)));
  }

  function renderProviders() {
    const ps = state.providers || [];
    $('providers-count').textContent = ps.length ? String(ps.length) : '';
    fill('providers-body', ps.map((p) => {
      const s = p.score;
      return row('providers-body', [
        mono(short(p.peer), p.peer + (p.offers ? ' (offering now)' : '')),
        { cell: s.score.toFixed(3), class: 'num', title: s.formula },
        { cell: s.finished, class: 'num', title: `${s.cosigned} with a receipt this peer co-signed` },
        { cell: s.providerFailed, class: 'num' },
        { cell: s.lost, class: 'num' },
        { cell: `${s.counted} of ${s.receipts} (weight ${s.weight.toFixed(2)})`, class: 'num', title: `${s.consumers} paying consumers, ${s.paidTotal} paid in all; ${s.uncountable} count for nothing` + (p.fetched ? '; fetched ' + ago(p.fetched) : '') },
        el('span', { class: 'meta' }, s.formula),
      ], { 'data-provider': p.peer });
    }), 'providers-empty');
  }

  function renderReceipts() {
    const rs = state.receipts || [];
    $('receipts-count').textContent = rs.length ? (state.receiptsTotal > rs.length ? `${rs.length} newest of ${state.receiptsTotal}` : String(rs.length)) : '';
    const a = state.anchoring;
    $('anchoring').textContent = a
      ? `Anchored on Solana: ${a.anchored} receipts in ${a.txs} transactions (${a.fees} lamports in fees); ${a.pending} pending, ${a.batches} batches on their way.` + (a.error ? ' Last error: ' + a.error : '')
      : 'This peer anchors nothing on Solana (it runs without --solana-rpc); a receipt\'s provider anchors it.';
    fill('receipts-body', rs.map((r) => {
      const u = parseUnit(r.unit);
      const sigs = el('span', {},
        el('span', { class: r.providerSig ? 'yes' : 'no', title: 'provider ' + r.providerSig }, 'provider ' + (r.providerSig ? '✓' : '✗')), ' ',
        el('span', { class: r.consumerSig ? 'yes' : 'no', title: r.consumerSig ? 'consumer ' + r.consumerSig : 'not countersigned yet' }, 'consumer ' + (r.consumerSig ? '✓' : '…')), ' ',
        el('span', { class: 'sig mono' }, shortHex(r.consumerSig || r.providerSig)),
        r.verified ? null : el('span', { class: 'no', title: 'both signatures do not check (yet)' }, ' unverified'));
      return row('receipts-body', [
        mono(short(r.job), r.key),
        { cell: r.rank, class: 'num' },
        `${r.gpus}× ${r.class}`,
        { cell: r.gpuSeconds < 10 ? r.gpuSeconds.toFixed(3) : r.gpuSeconds.toFixed(1), class: 'num' },
        { cell: r.checkpointBytes ? size(r.checkpointBytes) : '—', class: 'num', title: 'checkpoint bytes its provider sent the consumer, as the consumer counted them (signed by both)' },
        { cell: `${amount(r.amount, u.decimals)} ${u.token}`, class: 'num', title: `at ${amount(r.price, u.decimals)} ${u.token}/GPU-h` },
        sigs,
        r.anchor ? badge(r.anchor) : el('span', { class: 'meta', title: 'anchored by its provider' }, '—'),
        r.tx ? mono(short(r.tx), `${r.tx} (slot ${r.slot})`) : '—',
      ], { 'data-receipt': r.key, 'data-anchor': r.anchor || '' });
    }), 'receipts-empty');
  }

  // --- price chart --------------------------------------------------------

  function renderChart() {
    const box = $('chart');
    const width = Math.max(280, Math.floor(box.clientWidth || 600));
    const height = 200;
    const pad = { l: 44, r: 10, t: 10, b: 22 };
    const s = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'Prices over time' });
    const pts = history.filter((p) => p.median > 0 || p.lowest > 0);
    const classes = [...new Set(pts.map((p) => p.class))].sort();
    const legend = [];
    if (pts.length === 0) {
      const t = svg('text', { x: width / 2, y: height / 2, 'text-anchor': 'middle', class: 'none' });
      t.textContent = 'No prices yet: a point every 5 s once providers quote.';
      s.append(t);
      box.replaceChildren(s);
      $('legend').replaceChildren();
      return;
    }
    let t0 = Math.min(...pts.map((p) => p.t)), t1 = Math.max(...pts.map((p) => p.t));
    if (t1 - t0 < 60000) t0 = t1 - 60000; // at least a minute wide
    const vals = pts.flatMap((p) => [p.median, p.lowest]).filter((v) => v > 0);
    let lo = Math.min(...vals), hi = Math.max(...vals);
    const span = hi - lo || hi * 0.1 || 1;
    lo = Math.max(0, lo - span * 0.15);
    hi = hi + span * 0.15;
    const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (width - pad.l - pad.r);
    const y = (v) => pad.t + (1 - (v - lo) / (hi - lo)) * (height - pad.t - pad.b);
    for (let i = 0; i <= 3; i++) {
      const v = lo + ((hi - lo) * i) / 3;
      s.append(svg('line', { x1: pad.l, x2: width - pad.r, y1: y(v), y2: y(v), class: 'grid' }));
      const t = svg('text', { x: pad.l - 6, y: y(v) + 4, 'text-anchor': 'end' });
      t.textContent = v.toFixed(2);
      s.append(t);
    }
    for (const [t, anchor] of [[t0, 'start'], [t1, 'end']]) {
      const e = svg('text', { x: x(t), y: height - 6, 'text-anchor': anchor });
      e.textContent = clock(t);
      s.append(e);
    }
    classes.forEach((c, i) => {
      const color = COLORS[i % COLORS.length];
      const mine = pts.filter((p) => p.class === c);
      for (const [field, dash] of [['lowest', '5 4'], ['median', '']]) {
        const seg = mine.filter((p) => p[field] > 0);
        if (!seg.length) continue;
        const d = seg.map((p, k) => `${k ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p[field]).toFixed(1)}`).join(' ');
        const attrs = { d, fill: 'none', stroke: color, 'stroke-width': field === 'median' ? 2.2 : 1.6 };
        if (dash) attrs['stroke-dasharray'] = dash;
        s.append(svg('path', attrs));
        if (seg.length === 1) s.append(svg('circle', { cx: x(seg[0].t), cy: y(seg[0][field]), r: 3, fill: color }));
        const last = seg[seg.length - 1][field];
        legend.push(el('span', {}, el('span', { class: 'sw' + (dash ? ' dash' : ''), 'data-color': color }), `${c} ${field === 'median' ? 'median' : 'lowest ask'} ${last.toFixed(2)}`));
      }
    });
    box.replaceChildren(s);
    $('legend').replaceChildren(...legend);
    // Colours through the CSSOM (the page's policy allows no inline style attributes).
    for (const sw of $('legend').querySelectorAll('.sw')) sw.style.borderTopColor = sw.dataset.color;
  }

  // --- wiring -------------------------------------------------------------

  function render() {
    if (!state) return;
    renderPeer();
    renderPeers();
    renderGPUs();
    renderPrices();
    renderJobs();
    renderProviders();
    renderReceipts();
    lastUpdate = Date.now();
    $('updated').textContent = 'Updated ' + clock(lastUpdate) + '.';
  }

  function setLive(live, text) {
    $('conn').dataset.live = String(live);
    $('conn-text').textContent = text || (live ? 'live' : 'reconnecting…');
  }

  function connect() {
    const es = new EventSource('explorer/events');
    es.addEventListener('open', () => setLive(true));
    es.addEventListener('error', () => setLive(false)); // EventSource retries by itself
    es.addEventListener('history', (e) => {
      history = JSON.parse(e.data) || [];
      renderChart();
    });
    es.addEventListener('price', (e) => {
      history.push(...(JSON.parse(e.data) || []));
      if (history.length > MAX_POINTS) history = history.slice(history.length - MAX_POINTS);
      renderChart();
    });
    es.addEventListener('snapshot', (e) => {
      state = JSON.parse(e.data);
      setLive(true);
      render();
    });
  }

  // Uptime and "ago" move without the server.
  setInterval(() => {
    if (!state) return;
    const up = $('uptime');
    if (up) up.textContent = duration((Date.now() - new Date(state.peer.started).getTime()) / 1000);
    document.querySelectorAll('.queue-left').forEach((e) => { e.textContent = queueLeft(e.dataset.until); });
  }, 1000);

  let resizeTimer = null;
  window.addEventListener('resize', () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(renderChart, 150);
  });

  connect();
})();
