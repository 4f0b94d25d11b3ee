// Handler for /api/health
import { respond, lookup } from '../lib/http';

export function handle(req: Request): Response {
  return respond(200, lookup('health', req));
}
