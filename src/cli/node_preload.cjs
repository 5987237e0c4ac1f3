// agent-vault run: routes Node's https, http and fetch through the proxy in HTTPS_PROXY.
//
// Loaded with `NODE_OPTIONS=--require <this file>` by `agent-vault run`. Node before 22.21 (and
// 24.0-24.4 for http/https) ignores HTTPS_PROXY, so without this a Node program's requests would
// go out directly: no credential attached, no log row, no deny policy. Node that honours
// NODE_USE_ENV_PROXY (22.21+, 24.5+), which `run` also sets, is left to do it natively.
//
// What it patches, all in this process only:
// - https.Agent.prototype.createConnection: every https.Agent (the global one and any a library
//   creates) opens a CONNECT tunnel with Proxy-Authorization, then TLS inside it;
// - http.Agent.prototype.addRequest: plain http requests are sent in absolute form to the proxy;
// - fetch: on its first call, the global undici dispatcher is replaced by one of the same class
//   whose connections go through the tunnel (and whose plain http requests go in absolute form).
// Hosts in NO_PROXY go direct. A refusal from the proxy (403 at CONNECT, 407) becomes an error
// whose message carries the proxy's own explanation. Plain JS, no dependencies; it never throws
// while loading.
'use strict';

(function agentVaultPreload() {
  const env = process.env;
  const [major, minor] = process.versions.node.split('.').map(Number);
  // Node's own support: http, https and fetch under NODE_USE_ENV_PROXY=1.
  const native = major >= 25 || (major === 24 && minor >= 5) || (major === 22 && minor >= 21);
  if (native && env.NODE_USE_ENV_PROXY === '1') {
    return;
  }
  if (globalThis[Symbol.for('agent-vault.preload')]) {
    return;
  }
  globalThis[Symbol.for('agent-vault.preload')] = true;

  let proxy;
  try {
    const raw = env.https_proxy || env.HTTPS_PROXY || env.http_proxy || env.HTTP_PROXY;
    if (!raw) {
      return;
    }
    const u = new URL(raw);
    if (u.protocol !== 'http:') {
      return;
    }
    const user = decodeURIComponent(u.username);
    const pass = decodeURIComponent(u.password);
    proxy = {
      host: u.hostname.replace(/^\[|\]$/g, ''),
      port: Number(u.port || 80),
      origin: u.origin,
      auth: user || pass ? 'Basic ' + Buffer.from(user + ':' + pass).toString('base64') : null,
    };
  } catch (_) {
    return;
  }

  const net = require('net');
  const tls = require('tls');
  const http = require('http');
  const https = require('https');

  const noProxy = String(env.no_proxy || env.NO_PROXY || '')
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean);

  // Whether a host goes direct: NO_PROXY entries match the name or a parent domain; `*` is all.
  function direct(host) {
    const h = String(host || '').toLowerCase().replace(/^\[|\]$/g, '').replace(/\.$/, '');
    if (h === proxy.host.toLowerCase()) {
      return true;
    }
    return noProxy.some((entry) => {
      if (entry === '*') {
        return true;
      }
      const e = entry.replace(/^\*?\./, '').replace(/^\[|\]$/g, '').replace(/:\d+$/, '');
      return h === e || h.endsWith('.' + e);
    });
  }

  // Reads the proxy's answer to CONNECT: on 200 hands over the socket (with any bytes that
  // arrived after the head); otherwise an error that says what the proxy said.
  function readConnectReply(socket, target, done) {
    let buf = Buffer.alloc(0);
    let head = null;
    let finished = false;
    const finish = (err, sock) => {
      if (finished) {
        return;
      }
      finished = true;
      socket.removeListener('data', onData);
      socket.removeListener('error', onError);
      socket.removeListener('end', onEnd);
      done(err, sock);
    };
    const refusal = () => {
      const status = head.status;
      let detail = '';
      try {
        const body = JSON.parse(buf.subarray(head.length).toString('utf8'));
        detail = body.message ? ': ' + body.message : '';
        if (body.hint && body.hint.text) {
          detail += ' (' + body.hint.text + ')';
        }
      } catch (_) {
        detail = '';
      }
      const err = new Error(
        'agent-vault proxy refused CONNECT ' + target + ': ' + head.statusLine + detail
      );
      err.code = 'EAGENTVAULTPROXY';
      err.statusCode = status;
      socket.destroy();
      finish(err);
    };
    const onData = (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      if (head === null) {
        const end = buf.indexOf('\r\n\r\n');
        if (end === -1) {
          if (buf.length > 65536) {
            socket.destroy();
            finish(new Error('agent-vault proxy: CONNECT reply head too large'));
          }
          return;
        }
        const text = buf.subarray(0, end).toString('latin1');
        const statusLine = text.split('\r\n')[0];
        const m = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine);
        const lengthMatch = /\r\ncontent-length:\s*(\d+)/i.exec(text);
        head = {
          status: m ? Number(m[1]) : 0,
          statusLine,
          length: end + 4,
          bodyLength: lengthMatch ? Number(lengthMatch[1]) : 0,
        };
        if (head.status === 200) {
          socket.pause();
          const rest = buf.subarray(head.length);
          if (rest.length > 0) {
            socket.unshift(rest);
          }
          finish(null, socket);
          return;
        }
      }
      if (buf.length - head.length >= Math.min(head.bodyLength, 65536)) {
        refusal();
      }
    };
    const onError = (err) => finish(err);
    const onEnd = () => {
      if (head !== null) {
        refusal();
      } else {
        finish(new Error('agent-vault proxy closed the connection during CONNECT ' + target));
      }
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('end', onEnd);
  }

  // Opens a CONNECT tunnel to host:port through the proxy; `done(err, socket)`.
  function tunnel(host, port, done) {
    const bare = String(host).replace(/^\[|\]$/g, '');
    const target = (net.isIPv6(bare) ? '[' + bare + ']' : bare) + ':' + port;
    const socket = net.connect({ host: proxy.host, port: proxy.port });
    let head = 'CONNECT ' + target + ' HTTP/1.1\r\nHost: ' + target + '\r\n';
    if (proxy.auth) {
      head += 'Proxy-Authorization: ' + proxy.auth + '\r\n';
    }
    socket.once('connect', () => socket.write(head + '\r\n'));
    readConnectReply(socket, target, done);
    return socket;
  }

  // https and every https.Agent: TLS inside a tunnel.
  const httpsCreate = https.Agent.prototype.createConnection;
  https.Agent.prototype.createConnection = function createConnection(options, cb) {
    if (
      options === null ||
      typeof options !== 'object' ||
      options.socketPath ||
      direct(options.host || options.hostname)
    ) {
      return httpsCreate.apply(this, arguments);
    }
    if (typeof cb !== 'function') {
      throw new Error('agent-vault: cannot open a proxy tunnel synchronously');
    }
    const self = this;
    tunnel(options.host || options.hostname, options.port || 443, (err, socket) => {
      if (err) {
        cb(err);
        return;
      }
      let tlsSocket;
      try {
        tlsSocket = httpsCreate.call(self, Object.assign({}, options, { socket }));
      } catch (e) {
        socket.destroy();
        cb(e);
        return;
      }
      socket.resume();
      cb(null, tlsSocket);
    });
    return undefined;
  };

  // Plain http: absolute-form requests to the proxy (the socket pool is the proxy's).
  const httpAddRequest = http.Agent.prototype.addRequest;
  http.Agent.prototype.addRequest = function addRequest(req, options, ...rest) {
    if (
      this.protocol === 'http:' &&
      options &&
      typeof options === 'object' &&
      !options.socketPath &&
      !req._header &&
      typeof req.path === 'string' &&
      req.path.startsWith('/') &&
      !direct(options.host || options.hostname)
    ) {
      const host = String(options.host || options.hostname).replace(/^\[|\]$/g, '');
      const port = Number(options.port || 80);
      const authority = (net.isIPv6(host) ? '[' + host + ']' : host) + (port === 80 ? '' : ':' + port);
      req.path = 'http://' + authority + req.path;
      if (proxy.auth && !req.hasHeader('proxy-authorization')) {
        req.setHeader('Proxy-Authorization', proxy.auth);
      }
      options = Object.assign({}, options, {
        host: proxy.host,
        hostname: proxy.host,
        port: proxy.port,
        servername: undefined,
      });
    }
    return httpAddRequest.call(this, req, options, ...rest);
  };

  // fetch: the undici global dispatcher, replaced on first use (loading undici costs tens of
  // milliseconds, so programs that never fetch do not pay it).
  const dispatcherKey = Symbol.for('undici.globalDispatcher.1');
  const originalFetch = globalThis.fetch;
  if (typeof originalFetch !== 'function') {
    return;
  }
  let installed = false;
  function install() {
    installed = true;
    if (globalThis[dispatcherKey] === undefined) {
      // Calling fetch loads undici, which sets its default Agent; the data: URL goes nowhere.
      originalFetch('data:,').catch(() => {});
    }
    const current = globalThis[dispatcherKey];
    if (!current || !current.constructor || current.constructor.name !== 'Agent') {
      return; // someone chose their own dispatcher: theirs decides
    }
    const Agent = current.constructor;
    class ProxiedAgent extends Agent {
      dispatch(opts, handler) {
        let origin;
        try {
          origin = new URL(String(opts.origin));
        } catch (_) {
          return super.dispatch(opts, handler);
        }
        if (origin.protocol === 'http:' && !direct(origin.hostname)) {
          let headers = opts.headers;
          const extra = ['host', origin.host];
          if (proxy.auth) {
            extra.push('proxy-authorization', proxy.auth);
          }
          if (Array.isArray(headers)) {
            headers = headers.concat(extra);
          } else {
            headers = Object.assign({}, headers || {});
            for (let i = 0; i < extra.length; i += 2) {
              headers[extra[i]] = extra[i + 1];
            }
          }
          opts = Object.assign({}, opts, {
            origin: proxy.origin,
            path: origin.origin + opts.path,
            headers,
          });
        }
        return super.dispatch(opts, handler);
      }
    }
    globalThis[dispatcherKey] = new ProxiedAgent({
      connect(opts, callback) {
        const host = opts.hostname;
        if (opts.protocol !== 'https:') {
          // Plain http reaches the proxy itself (see dispatch) or a NO_PROXY host.
          const s = net.connect({ host, port: Number(opts.port || 80) });
          s.once('connect', () => callback(null, s));
          s.once('error', (e) => callback(e));
          return;
        }
        const servername = opts.servername || (net.isIP(host) ? undefined : host);
        const port = Number(opts.port || 443);
        const secure = (socket) => {
          const t = tls.connect({ socket, servername, ALPNProtocols: ['http/1.1'] });
          let called = false;
          t.once('secureConnect', () => {
            called = true;
            callback(null, t);
          });
          t.once('error', (e) => {
            if (!called) {
              called = true;
              callback(e);
            }
          });
        };
        if (direct(host)) {
          secure(net.connect({ host, port }));
          return;
        }
        tunnel(host, port, (err, socket) => {
          if (err) {
            callback(err);
            return;
          }
          secure(socket);
          socket.resume();
        });
      },
    });
  }
  globalThis.fetch = function fetch(input, init) {
    if (!installed) {
      install();
    }
    return originalFetch.call(this, input, init);
  };
})();
