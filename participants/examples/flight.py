"""Flight: books a seat to the trip's destination, and cancels it.

saga participant participants.examples.flight:worker
"""

from participants.examples.bookings import booking_worker

worker = booking_worker("flight", "book_flight", "cancel_flight", "seats", "no_seat")
