"""An https server on 127.0.0.1 serving OAuth Client ID Metadata Documents, good and bad,
for the gateway's tests.

Usage: client_documents.py CERT KEY REDIRECT_URI
Prints `listening https://127.0.0.1:PORT` and then one line per request (`GET /path`).
Paths: /client.json (a good document), /other.json (names another client_id),
/redirect.json (302 to /client.json), /big.json (over 5 KiB).
"""

import http.server
import json
import ssl
import sys

cert, key, redirect_uri = sys.argv[1:4]


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        print(f"GET {self.path}", flush=True)
        base = f"https://127.0.0.1:{self.server.server_address[1]}"
        document = {"client_id": f"{base}{self.path}", "client_name": "Document App", "redirect_uris": [redirect_uri]}
        if self.path == "/redirect.json":
            self.send_response(302)
            self.send_header("Location", f"{base}/client.json")
            self.end_headers()
            return
        if self.path == "/other.json":
            document["client_id"] = f"{base}/client.json"
        if self.path == "/big.json":
            document["padding"] = "x" * 6000
        if self.path not in ("/client.json", "/other.json", "/big.json"):
            self.send_response(404)
            self.end_headers()
            return
        body = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "max-age=300")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(f"listening https://127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
