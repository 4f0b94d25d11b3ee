#!/usr/bin/env python3
"""Writes tickets.jsonl: 300 made-up support tickets for a made-up company, Ledgerly.

Deterministic (fixed seed): running it again gives the same file. Tickets are composed from
parts (openings, problem sentences per issue type, details, closings) so that they read like
real ones and vary in length, tone and product. Nothing here is real customer data.

Usage: python3 generate_tickets.py [COUNT] > tickets.jsonl   (COUNT defaults to 300)
"""

import json
import random
import sys
from datetime import datetime, timedelta

SEED = 20261121

PRODUCTS = [
    "Ledgerly Invoicing",
    "Ledgerly Payroll",
    "Ledgerly Mobile (iOS)",
    "Ledgerly Mobile (Android)",
    "Ledgerly API",
    "Ledgerly Cards",
    "Ledgerly POS Terminal",
    "Ledgerly Expenses",
]

FIRST = ["Maria", "James", "Aiko", "Oluwaseun", "Priya", "Lukas", "Sofia", "Mateo", "Chen", "Fatima",
         "Noah", "Ingrid", "Rahul", "Amelia", "Kwame", "Elena", "Tomás", "Hannah", "Yusuf", "Grace",
         "Dmitri", "Leila", "Sean", "Marta", "Kenji", "Zoe", "Arjun", "Camille", "Omar", "Beatriz"]
LAST = ["Okafor", "Schmidt", "Tanaka", "Rossi", "Nguyen", "Kowalski", "Haddad", "Johansson", "García",
        "Patel", "O'Brien", "Dubois", "Mensah", "Ivanova", "Silva", "Yamamoto", "Brennan", "Costa",
        "Fischer", "Lindqvist", "Abebe", "Moreau", "Castillo", "Novak", "Reyes"]
COMPANIES = ["Bright Lantern Bakery", "Northwind Dental", "Harbor & Pine Architects", "Kestrel Logistics",
             "Cobalt Yoga Studio", "Maple Street Books", "Riverbend Veterinary", "Atlas Tiling Co.",
             "Sunday Print Shop", "Greenleaf Landscaping", "Quillfeather Legal", "Orbit Bike Repair",
             "Copperpot Catering", "Blue Heron Tours", "Ironclad Fitness", "Little Owl Daycare",
             "Saltwater Surf School", "Parkside Pharmacy", "Redwood IT Services", "Velvet Note Music School"]
PLANS = ["Starter", "Starter", "Growth", "Growth", "Growth", "Business", "Enterprise"]
CHANNELS = ["email", "email", "web_form", "chat", "chat", "phone_transcript"]

OPENINGS = [
    "Hi there,", "Hello,", "Hi team,", "Good morning,", "Hey,", "Dear Ledgerly support,",
    "Hi, hoping you can help.", "Hello again,", "", "",
]
CLOSINGS = [
    "Thanks.", "Thanks in advance!", "Appreciate any help.", "Please get back to me soon.",
    "This is urgent for us.", "Cheers,", "Kind regards,", "Thank you for your time.", "", "",
]

# Per issue type: subjects, problem sentences (with {product}), details, and how upset people are.
ISSUES = {
    "billing": {
        "subjects": ["Charged twice this month", "Invoice amount looks wrong", "Question about my bill",
                     "Unexpected charge on my card", "Plan price went up?", "VAT missing on invoice"],
        "problems": [
            "We were charged twice for our {plan} subscription on the {day}.",
            "Our latest invoice shows {amount} but our plan should be cheaper than that.",
            "I see a charge of {amount} that I don't recognise, labelled '{product} add-on'.",
            "The price of the {plan} plan went up without any notice that I can find.",
            "Our invoice for {month} has no VAT number on it, so our accountant can't use it.",
            "We downgraded to {plan} last month but were still billed at the old rate.",
        ],
        "details": [
            "The card ends in {card}.", "Our account email is {email}.",
            "I've attached a screenshot of the bank statement.", "Invoice number is INV-{number}.",
            "This has happened two months in a row now.",
        ],
    },
    "login": {
        "subjects": ["Can't log in", "Password reset email never arrives", "Locked out of my account",
                     "2FA code not accepted", "SSO login broken", "Login loop on {product}"],
        "problems": [
            "I can't log in to {product}; it says my password is wrong but I just reset it.",
            "The password reset email never arrives, I've checked spam too.",
            "My account got locked after a few attempts and now I can't get back in.",
            "The two-factor code from my authenticator app is rejected every time.",
            "Since this morning our Google SSO login sends us back to the login page in a loop.",
            "I changed phones and lost my 2FA, how do I get back into {product}?",
        ],
        "details": [
            "I'm using {browser}.", "My username is {email}.", "Other people on my team can log in fine.",
            "I've cleared cookies and tried an incognito window.", "The error code shown is AUTH-{code}.",
        ],
    },
    "bug": {
        "subjects": ["{product} crashes", "Export to CSV is broken", "Numbers don't add up in report",
                     "Error when saving invoice", "App freezes on sync", "PDF looks garbled"],
        "problems": [
            "{product} crashes every time I open the reports tab.",
            "Exporting transactions to CSV gives an empty file since the last update.",
            "The monthly report totals don't match the sum of the individual lines.",
            "When I save an invoice with a discount I get 'Something went wrong (500)'.",
            "The app freezes at 'Syncing…' and never finishes.",
            "Invoice PDFs show boxes instead of accented characters like é and ñ.",
            "Recurring invoices were sent twice to some of our customers this morning.",
        ],
        "details": [
            "I'm on version {version}.", "It happens on {browser} and also on my phone.",
            "Steps: open {product}, go to Settings, click Save.", "It started after the update on the {day}.",
            "I've attached the console log.", "Restarting doesn't help.",
        ],
    },
    "feature_request": {
        "subjects": ["Feature request: {feature}", "Would love {feature}", "Any plans for {feature}?",
                     "Suggestion for {product}"],
        "problems": [
            "It would save us hours if {product} supported {feature}.",
            "Is {feature} on the roadmap? Our competitor's tool has it.",
            "Could you add {feature}? We'd happily pay more for it.",
            "Small suggestion: {feature} would make {product} much nicer to use.",
        ],
        "details": [
            "We have about {count} invoices a month.", "Our team is {count} people.",
            "This is the main reason we're looking at other tools.", "Happy to beta test.",
        ],
    },
    "shipping": {
        "subjects": ["Where is my terminal?", "Card reader not delivered", "Tracking number doesn't work",
                     "Wrong item delivered", "Delivery delayed"],
        "problems": [
            "We ordered a {product} on the {day} and it still hasn't arrived.",
            "The tracking number for our {product} shows 'label created' for a week now.",
            "We received a {other} instead of the {product} we ordered.",
            "Our new Ledgerly Cards were supposed to arrive last week, still nothing.",
            "The courier says the package was delivered but nobody here received it.",
        ],
        "details": [
            "Order number is ORD-{number}.", "We need it before our market stall opens on Saturday.",
            "The delivery address is our shop, {company}.", "Tracking: LD{number}GB.",
        ],
    },
    "refund": {
        "subjects": ["Refund request", "Cancel and refund please", "Refund not received",
                     "Want my money back", "Refund for unused months"],
        "problems": [
            "We cancelled on the {day} but were still charged {amount}; please refund it.",
            "I was promised a refund of {amount} two weeks ago and haven't received it.",
            "The {product} we bought doesn't work for our shop, we'd like to return it for a refund.",
            "We paid annually and are closing the business; can we get the unused months back?",
            "I was charged for the {plan} plan during the free trial. Please refund.",
        ],
        "details": [
            "Refund reference RF-{number}.", "Our account email is {email}.",
            "We've been customers for {count} years.", "Please confirm by email.",
        ],
    },
    "account": {
        "subjects": ["Change account owner", "Add a user", "Delete my data", "Update company details",
                     "Merge two accounts"],
        "problems": [
            "Our previous owner left the company; how do we transfer the account to me?",
            "How do I add our new bookkeeper to {product} without giving her admin rights?",
            "Please delete all of my personal data under GDPR.",
            "We changed our company name to {company}; how do we update it on invoices?",
            "We accidentally created two accounts and want to merge them.",
        ],
        "details": [
            "Our account email is {email}.", "I'm the director of {company}.",
            "We're on the {plan} plan.", "No rush, whenever you can.",
        ],
    },
    "performance": {
        "subjects": ["{product} is very slow", "Timeouts on API", "Dashboard takes forever",
                     "Slow sync"],
        "problems": [
            "The dashboard takes over {seconds} seconds to load since Monday.",
            "Our integration gets timeouts from the {product} about one request in ten.",
            "Searching invoices is painfully slow, it used to be instant.",
            "Bank sync takes hours now instead of minutes.",
        ],
        "details": [
            "We have about {count} customers in the system.", "It's worst around 9am.",
            "Our internet connection is fine, other sites load quickly.", "Request id req_{code}.",
        ],
    },
}

FEATURES = ["bulk editing of invoices", "a dark mode", "QuickBooks import", "multi-currency invoices",
            "custom invoice templates", "Slack notifications for payments", "an Xero export",
            "scheduled reports by email", "role-based permissions", "a Zapier integration"]
BROWSERS = ["Chrome on Windows", "Safari on a Mac", "Firefox", "Edge", "the iPhone app", "the Android app"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
TONES = ["", "", "", " This is really frustrating.", " Honestly this is unacceptable.",
         " Not a big deal, just letting you know.", " Loving the product otherwise!",
         " We're considering cancelling over this."]


def ordinal(n):
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def fill(rng, text, ctx):
    values = {
        "product": ctx["product"], "plan": ctx["plan"], "company": ctx["company"], "email": ctx["email"],
        "day": ordinal(rng.randint(1, 28)), "amount": f"${rng.randint(9, 480)}.{rng.randint(0, 99):02d}",
        "month": rng.choice(MONTHS), "card": f"{rng.randint(1000, 9999)}", "number": f"{rng.randint(10000, 99999)}",
        "browser": rng.choice(BROWSERS), "code": f"{rng.randint(100, 999)}", "version": f"4.{rng.randint(0, 12)}.{rng.randint(0, 9)}",
        "feature": ctx["feature"], "count": str(rng.choice([3, 5, 12, 40, 150, 800, 2000])),
        "other": rng.choice(["card reader stand", "receipt printer", "charging dock"]),
        "seconds": str(rng.randint(10, 90)),
    }
    return text.format(**values)


def ticket(rng, number, created):
    kind = rng.choices(list(ISSUES), weights=[18, 16, 20, 10, 8, 10, 8, 10])[0]
    issue = ISSUES[kind]
    first, last = rng.choice(FIRST), rng.choice(LAST)
    company = rng.choice(COMPANIES)
    product = rng.choice(["Ledgerly POS Terminal", "Ledgerly Cards"]) if kind == "shipping" else rng.choice(PRODUCTS)
    ctx = {
        "product": product, "plan": rng.choice(PLANS), "company": company, "feature": rng.choice(FEATURES),
        "email": f"{first.lower()}.{last.lower().replace(chr(39), '')}@{company.split()[0].lower()}.example",
    }
    sentences = [fill(rng, rng.choice(issue["problems"]), ctx)]
    for detail in rng.sample(issue["details"], k=rng.randint(0, 2)):
        sentences.append(fill(rng, detail, ctx))
    body = " ".join(sentences) + rng.choice(TONES)
    opening, closing = rng.choice(OPENINGS), rng.choice(CLOSINGS)
    parts = [p for p in [opening, body, closing, first if closing.endswith(",") else ""] if p]
    channel = rng.choice(CHANNELS)
    separator = " " if channel in ("chat", "phone_transcript") else "\n\n"
    return {
        "id": f"TCK-{number}",
        "created_at": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "channel": channel,
        "customer": {"name": f"{first} {last}", "company": company, "plan": ctx["plan"]},
        "product": product if rng.random() > 0.15 else None,
        "subject": fill(rng, rng.choice(issue["subjects"]), ctx),
        "body": separator.join(parts),
    }


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    rng = random.Random(SEED)
    created = datetime(2026, 10, 1, 8, 0, 0)
    for number in range(1001, 1001 + count):
        created += timedelta(minutes=rng.randint(3, 240))
        sys.stdout.write(json.dumps(ticket(rng, number, created), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
