"""HTTP: the kept-alive HTTP/1.1 client, the task API and token clients, the small server base."""
