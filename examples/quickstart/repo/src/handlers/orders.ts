// Handler for /api/orders
import { respond, lookup } from '../lib/http';

export function handle(req: Request): Response {
  return respond(200, lookup('orders', req));
}
