-- pgtier-app schema v1: a tutoring marketplace.
CREATE TABLE subjects (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tutors (
    id                bigserial PRIMARY KEY,
    name              text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    bio               text NOT NULL DEFAULT '',
    hourly_rate_cents integer NOT NULL CHECK (hourly_rate_cents >= 0),
    rating            double precision NOT NULL DEFAULT 0,
    review_count      integer NOT NULL DEFAULT 0,
    rating_sum        bigint NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tutors_rating_idx ON tutors (rating DESC, id);

CREATE TABLE tutor_subjects (
    tutor_id   bigint NOT NULL REFERENCES tutors (id) ON DELETE CASCADE,
    subject_id bigint NOT NULL REFERENCES subjects (id) ON DELETE CASCADE,
    PRIMARY KEY (tutor_id, subject_id)
);
CREATE INDEX tutor_subjects_subject_idx ON tutor_subjects (subject_id, tutor_id);

CREATE TABLE students (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    email      text NOT NULL UNIQUE CHECK (position('@' IN email) > 1),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE availability (
    id        bigserial PRIMARY KEY,
    tutor_id  bigint NOT NULL REFERENCES tutors (id) ON DELETE CASCADE,
    starts_at timestamptz NOT NULL,
    ends_at   timestamptz NOT NULL,
    CHECK (ends_at > starts_at)
);
CREATE INDEX availability_tutor_idx ON availability (tutor_id, starts_at);

CREATE TABLE bookings (
    id         bigserial PRIMARY KEY,
    tutor_id   bigint NOT NULL REFERENCES tutors (id),
    student_id bigint NOT NULL REFERENCES students (id),
    starts_at  timestamptz NOT NULL,
    ends_at    timestamptz NOT NULL,
    status     text NOT NULL DEFAULT 'requested'
               CHECK (status IN ('requested', 'confirmed', 'completed', 'cancelled')),
    price_cents bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at)
);
CREATE INDEX bookings_tutor_idx ON bookings (tutor_id, starts_at);
CREATE INDEX bookings_student_idx ON bookings (student_id, id);

CREATE TABLE reviews (
    id         bigserial PRIMARY KEY,
    booking_id bigint NOT NULL UNIQUE REFERENCES bookings (id),
    tutor_id   bigint NOT NULL REFERENCES tutors (id),
    student_id bigint NOT NULL REFERENCES students (id),
    rating     smallint NOT NULL CHECK (rating BETWEEN 1 AND 5),
    comment    text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reviews_tutor_idx ON reviews (tutor_id, id DESC);
