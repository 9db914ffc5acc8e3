// The family-budget app's live-update client from before budget_ws, kept unchanged:
// the compatibility mode of budget_ws must keep pages that load it working.
// It connects without a subprotocol, never subscribes, reads one {"event", "data"}
// object per message, never answers pings and reconnects on a fixed 3 s timer.
class BudgetSocket {
  constructor(url) {
    this.url = url;
    this.handlers = {};
    this.connect();
  }

  on(event, handler) {
    (this.handlers[event] = this.handlers[event] || []).push(handler);
  }

  connect() {
    this.ws = new WebSocket(this.url);
    this.ws.onmessage = (message) => {
      const { event, data } = JSON.parse(message.data);
      (this.handlers[event] || []).forEach((handler) => handler(data));
    };
    this.ws.onclose = () => setTimeout(() => this.connect(), 3000);
  }
}
