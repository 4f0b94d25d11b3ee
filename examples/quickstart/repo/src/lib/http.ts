export function respond(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status });
}

export function lookup(kind: string, req: Request): unknown {
  return { kind, url: req.url };
}

export function validate(req: Request): void {
  if (!req.url) throw new Error('missing url');
}
