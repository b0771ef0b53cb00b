// The official Standard Webhooks npm package's verdict on deliveries.
//
// Reads {"secret": "whsec_...", "deliveries": [{"body": str, "headers": {...}}]}
// on stdin and prints a JSON list: true where `new Webhook(secret).verify`
// accepts the delivery, false where it throws. The same protocol as
// ../verify.py; used by tests/api/webhook_delivery.rs.
import { Webhook } from "standardwebhooks";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const request = JSON.parse(input);
const verdicts = request.deliveries.map((delivery) => {
  try {
    new Webhook(request.secret).verify(delivery.body, delivery.headers);
    return true;
  } catch {
    return false;
  }
});
console.log(JSON.stringify(verdicts));
