"""Car: rents a car at the trip's destination, and takes it back.

saga participant participants.examples.car:worker
"""

from participants.examples.bookings import booking_worker

worker = booking_worker("car", "rent_car", "return_car", "cars", "no_car")
