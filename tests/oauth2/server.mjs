// oauth2-mock-server on 127.0.0.1, made strict enough to test a client-credentials client:
// - the client secret is checked (client_secret_basic or client_secret_post); a wrong one gets
//   401 invalid_client, as Ory Hydra answers;
// - tokens live TOKEN_LIFETIME seconds (expires_in and the JWT's exp), not the fixed 3600;
// - /introspect/strict says active only for a token this process issued, unexpired and not revoked, so a
//   resource server (the sandbox task API) can check bearer tokens as the real one does with Hydra.
// Settings come from the environment: CLIENT_ID, CLIENT_SECRET, TOKEN_LIFETIME, PORT (0: any).
// It prints one JSON line per event on stdout ({"event":"listening","port":N}, {"event":"token",...})
// and reads commands on stdin: "revoke-all".
import { createInterface } from "node:readline";
import { OAuth2Server } from "oauth2-mock-server";

const clientId = process.env.CLIENT_ID ?? "aitp";
const clientSecret = process.env.CLIENT_SECRET ?? "secret";
const lifetime = Number(process.env.TOKEN_LIFETIME ?? "3600");
const port = Number(process.env.PORT ?? "0");
const issued = new Map(); // access token -> expiry, in seconds since the epoch

function say(event) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

function formDecode(text) {
  return decodeURIComponent(text.replace(/\+/g, " "));
}

// RFC 6749 2.3.1: the id and secret are form-encoded before they are put in the Basic header.
function clientOf(req) {
  const header = req.headers.authorization ?? "";
  if (header.startsWith("Basic ")) {
    const decoded = Buffer.from(header.slice(6), "base64").toString("utf8");
    const colon = decoded.indexOf(":");
    return { method: "client_secret_basic", id: formDecode(decoded.slice(0, colon)),
             secret: formDecode(decoded.slice(colon + 1)) };
  }
  return { method: "client_secret_post", id: req.body?.client_id, secret: req.body?.client_secret };
}

const server = new OAuth2Server();
await server.issuer.keys.generate("RS256");

server.service.on("beforeTokenSigning", (token) => {
  token.payload.exp = Math.floor(Date.now() / 1000) + lifetime;
});

server.service.on("beforeResponse", (response, req) => {
  const client = clientOf(req);
  const ok = client.id === clientId && client.secret === clientSecret;
  say({ event: "token", ok, method: client.method, grant_type: req.body?.grant_type ?? null,
        scope: req.body?.scope ?? null, at: Date.now() / 1000 });
  if (!ok) {
    response.statusCode = 401;
    response.body = { error: "invalid_client", error_description: "Client authentication failed." };
    return;
  }
  response.body.expires_in = lifetime;
  issued.set(response.body.access_token, Date.now() / 1000 + lifetime);
});

// The built-in /introspect answers active for anything and its hook never sees the form body,
// so the strict check is a route of its own (RFC 7662 request and answer).
server.service.addRoute("POST", "/introspect/strict", (req, res) => {
  const expiry = issued.get(req.body?.token);
  const active = expiry !== undefined && expiry > Date.now() / 1000;
  const body = active ? { active, client_id: clientId, exp: Math.floor(expiry), token_type: "Bearer" }
                      : { active: false };
  res.writeHead(200, { "Content-Type": "application/json" });
  res.end(JSON.stringify(body));
});

createInterface({ input: process.stdin }).on("line", (line) => {
  if (line.trim() === "revoke-all") {
    issued.clear();
    say({ event: "revoked" });
  }
});
process.stdin.on("end", () => process.exit(0)); // the test that started us is gone

await server.start(port, "127.0.0.1");
say({ event: "listening", port: server.address().port });
