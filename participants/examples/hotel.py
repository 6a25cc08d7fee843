"""Hotel: books a room for each night of the trip, and cancels it.

saga participant participants.examples.hotel:worker
"""

from participants.examples.bookings import booking_worker

worker = booking_worker("hotel", "book_hotel", "cancel_hotel", "rooms", "no_room", lambda p: int(p.get("nights", 1)))
