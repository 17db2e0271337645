// A Node.js HTTP server whose state lives in timers: a counter bumped every 100 ms, and a
// second timer that records when it last ran. GET / answers "count <n> last <ms>".
const http = require("http");
let count = 0;
let last = 0;
setInterval(() => { count += 1; }, 100);
setInterval(() => { last = Date.now(); }, 250);
http.createServer((req, res) => res.end(`count ${count} last ${last}`)).listen(8080, () => {
  console.log("listening 8080");
});
