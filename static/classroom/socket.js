// A class socket that reconnects with backoff and tells the page what is happening.
export class ClassSocket {
  constructor(url, { onMessage, onStatus }) {
    this.url = url;
    this.onMessage = onMessage;
    this.onStatus = onStatus;
    this.attempt = 0;
    this.seq = 0;
    this.closedByUs = false;
    this.connect();
  }

  connect() {
    this.onStatus(this.attempt === 0 ? "connecting" : "reconnecting", {});
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      const wasRetry = this.attempt > 0;
      this.attempt = 0;
      this.onStatus(wasRetry ? "reconnected" : "open", {});
    };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      this.onMessage(msg);
    };
    ws.onclose = (ev) => {
      if (this.closedByUs) return;
      // 4429: this person has too many tabs on the class; retrying would only be refused again.
      if (ev.code === 4401 || ev.code === 4403 || ev.code === 4404 || ev.code === 4429) {
        this.onStatus("refused", { code: ev.code });
        return;
      }
      // Backoff 0.5 s, 1 s, 2 s ... 8 s: a restarting server is not stampeded.
      const delay = Math.min(8000, 500 * 2 ** this.attempt);
      this.attempt += 1;
      this.onStatus("lost", { delay });
      setTimeout(() => this.connect(), delay);
    };
  }

  send(type, fields = {}) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return null;
    const id = String(++this.seq);
    this.ws.send(JSON.stringify({ type, id, ...fields }));
    return id;
  }

  close() {
    this.closedByUs = true;
    if (this.ws) this.ws.close();
  }
}
