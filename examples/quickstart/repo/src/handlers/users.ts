// Handler for /api/users
import { respond, lookup } from '../lib/http';

export function handle(req: Request): Response {
  return respond(200, lookup('users', req));
}
