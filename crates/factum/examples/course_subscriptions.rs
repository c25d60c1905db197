//! Course subscriptions, the first case of the dynamic consistency boundaries specification
//! (dcb.events): a course takes at most its capacity of students, and a student takes at most
//! three courses. The rule crosses two aggregates — no course stream and no student stream
//! alone can enforce it — so the decision reads the events tagged with the course *or* the
//! student, and appends only if none of them changed since.
//!
//! `cargo run --example course_subscriptions` runs it on the embedded store
//! (`FACTUM_DATA_DIR`, default `./factum-data`); `cargo test --example course_subscriptions`
//! runs its tests, among them 64 students racing for seats.

use factum::{CommandContext, Decision, DecisionError, Decisions, EventStore, Query};
use serde::{Deserialize, Serialize};

/// The most courses a student takes.
const COURSES_PER_STUDENT: usize = 3;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum CourseEvent {
    CourseDefined { course: String, capacity: usize },
    StudentSubscribed { course: String, student: String },
}

fn course_tag(course: &str) -> String {
    format!("course:{course}")
}

fn student_tag(student: &str) -> String {
    format!("student:{student}")
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
enum Refused {
    #[error("course {0} already exists")]
    CourseExists(String),
    #[error("course {0} does not exist")]
    NoSuchCourse(String),
    #[error("course {0} is full")]
    CourseFull(String),
    #[error("student {0} already takes {COURSES_PER_STUDENT} courses")]
    TooManyCourses(String),
    #[error("student {student} already takes course {course}")]
    AlreadySubscribed { course: String, student: String },
}

/// Defining a course: only once.
struct DefineCourse;

#[derive(Clone, Debug)]
struct Define {
    course: String,
    capacity: usize,
}

impl Decision for DefineCourse {
    type State = bool;
    type Command = Define;
    type Event = CourseEvent;
    type Error = Refused;

    fn query(&self, command: &Define) -> Query {
        Query::item(["CourseDefined"], [course_tag(&command.course)])
    }
    fn initial_state(&self, _: &Define) -> bool {
        false
    }
    fn evolve(&self, _: bool, _: &CourseEvent) -> bool {
        true
    }
    fn decide(&self, exists: &bool, command: &Define) -> Result<Vec<CourseEvent>, Refused> {
        if *exists {
            return Err(Refused::CourseExists(command.course.clone()));
        }
        Ok(vec![CourseEvent::CourseDefined {
            course: command.course.clone(),
            capacity: command.capacity,
        }])
    }
    fn tags(&self, event: &CourseEvent) -> Vec<String> {
        tags(event)
    }
}

fn tags(event: &CourseEvent) -> Vec<String> {
    match event {
        CourseEvent::CourseDefined { course, .. } => vec![course_tag(course)],
        CourseEvent::StudentSubscribed { course, student } => {
            vec![course_tag(course), student_tag(student)]
        }
    }
}

/// Subscribing a student to a course: the course's definition and subscriptions, and the
/// student's subscriptions, are the boundary.
struct SubscribeStudent;

#[derive(Clone, Debug)]
struct Subscribe {
    course: String,
    student: String,
}

/// What a subscription depends on: the course's capacity and subscriptions, the student's.
struct Seats {
    course: String,
    student: String,
    capacity: Option<usize>,
    in_course: usize,
    of_student: usize,
    already: bool,
}

impl Decision for SubscribeStudent {
    type State = Seats;
    type Command = Subscribe;
    type Event = CourseEvent;
    type Error = Refused;

    fn query(&self, command: &Subscribe) -> Query {
        Query::item(
            ["CourseDefined", "StudentSubscribed"],
            [course_tag(&command.course)],
        )
        .or(["StudentSubscribed"], [student_tag(&command.student)])
    }
    fn initial_state(&self, command: &Subscribe) -> Seats {
        Seats {
            course: command.course.clone(),
            student: command.student.clone(),
            capacity: None,
            in_course: 0,
            of_student: 0,
            already: false,
        }
    }
    fn evolve(&self, mut seats: Seats, event: &CourseEvent) -> Seats {
        match event {
            CourseEvent::CourseDefined { capacity, .. } => seats.capacity = Some(*capacity),
            CourseEvent::StudentSubscribed { course, student } => {
                let here = *course == seats.course;
                let mine = *student == seats.student;
                seats.in_course += usize::from(here);
                seats.of_student += usize::from(mine);
                seats.already |= here && mine;
            }
        }
        seats
    }
    fn decide(&self, seats: &Seats, command: &Subscribe) -> Result<Vec<CourseEvent>, Refused> {
        let Some(capacity) = seats.capacity else {
            return Err(Refused::NoSuchCourse(command.course.clone()));
        };
        if seats.already {
            return Err(Refused::AlreadySubscribed {
                course: command.course.clone(),
                student: command.student.clone(),
            });
        }
        if seats.in_course >= capacity {
            return Err(Refused::CourseFull(command.course.clone()));
        }
        if seats.of_student >= COURSES_PER_STUDENT {
            return Err(Refused::TooManyCourses(command.student.clone()));
        }
        Ok(vec![CourseEvent::StudentSubscribed {
            course: command.course.clone(),
            student: command.student.clone(),
        }])
    }
    fn tags(&self, event: &CourseEvent) -> Vec<String> {
        tags(event)
    }
}

async fn run(store: impl EventStore + Clone + 'static) -> anyhow::Result<()> {
    let define = Decisions::new(store.clone(), DefineCourse);
    let subscribe = Decisions::new(store.clone(), SubscribeStudent);
    let context = CommandContext::new();
    for (course, capacity) in [("algebra", 2), ("biology", 30)] {
        match define
            .execute(
                &Define {
                    course: course.into(),
                    capacity,
                },
                &context,
            )
            .await
        {
            Ok(_) => println!("course {course} defined, {capacity} seats"),
            Err(DecisionError::Rejected(e)) => println!("{e}"),
            Err(e) => return Err(e.into()),
        }
    }
    for student in ["ada", "grace", "alan"] {
        let command = Subscribe {
            course: "algebra".into(),
            student: student.into(),
        };
        match subscribe.execute(&command, &context).await {
            Ok(done) => println!("{student} takes algebra (position {:?})", done.position),
            Err(DecisionError::Rejected(e)) => println!("{student}: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::var("FACTUM_DATA_DIR").unwrap_or_else(|_| "./factum-data".into());
    let store = factum::Engine::open(&dir, factum::EngineOptions::default())?;
    run(store.clone()).await?;
    store.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use factum::testing::given_decision;
    use factum::{Direction, MemoryStore};

    use super::*;

    fn subscribe(course: &str, student: &str) -> Subscribe {
        Subscribe {
            course: course.into(),
            student: student.into(),
        }
    }

    fn defined(course: &str, capacity: usize) -> CourseEvent {
        CourseEvent::CourseDefined {
            course: course.into(),
            capacity,
        }
    }

    fn subscribed(course: &str, student: &str) -> CourseEvent {
        CourseEvent::StudentSubscribed {
            course: course.into(),
            student: student.into(),
        }
    }

    #[test]
    fn the_rules_given_when_then() {
        given_decision(SubscribeStudent, [defined("c", 2)])
            .when(subscribe("c", "s"))
            .then([subscribed("c", "s")]);
        given_decision(SubscribeStudent, [])
            .when(subscribe("c", "s"))
            .then_rejected(Refused::NoSuchCourse("c".into()));
        given_decision(
            SubscribeStudent,
            [defined("c", 2), subscribed("c", "a"), subscribed("c", "b")],
        )
        .when(subscribe("c", "s"))
        .then_rejected(Refused::CourseFull("c".into()));
        given_decision(
            SubscribeStudent,
            [
                defined("c", 9),
                subscribed("x", "s"),
                subscribed("y", "s"),
                subscribed("z", "s"),
            ],
        )
        .when(subscribe("c", "s"))
        .then_rejected(Refused::TooManyCourses("s".into()));
        given_decision(SubscribeStudent, [defined("c", 9), subscribed("c", "s")])
            .when(subscribe("c", "s"))
            .then_rejected_with(|e| matches!(e, Refused::AlreadySubscribed { .. }));
        given_decision(DefineCourse, [defined("c", 1)])
            .when(Define {
                course: "c".into(),
                capacity: 1,
            })
            .then_rejected(Refused::CourseExists("c".into()));
    }

    /// 64 students race for the seats of four courses of capacity 5, each trying five
    /// courses: no course over capacity, no student over three courses, no one twice.
    async fn race(store: Arc<dyn EventStore>) {
        let context = CommandContext::new();
        let define = Decisions::new(store.clone(), DefineCourse);
        for c in 0..4 {
            define
                .execute(
                    &Define {
                        course: format!("c{c}"),
                        capacity: 5,
                    },
                    &context,
                )
                .await
                .unwrap();
        }
        let decisions =
            Arc::new(Decisions::new(store.clone(), SubscribeStudent).with_attempts_max(200));
        let mut tasks = Vec::new();
        for s in 0..64 {
            let decisions = decisions.clone();
            tasks.push(tokio::spawn(async move {
                let context = CommandContext::new();
                let mut attempts = 0;
                for k in 0..5 {
                    let command = subscribe(&format!("c{}", (s + k) % 4), &format!("s{s}"));
                    match decisions.execute(&command, &context).await {
                        Ok(done) => attempts += done.attempts,
                        Err(DecisionError::Rejected(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                attempts
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let all = store
            .read_query(
                &Query::item(["StudentSubscribed"], Vec::<String>::new()),
                None,
                Direction::Forwards,
                10_000,
            )
            .await
            .unwrap();
        let events: Vec<CourseEvent> = all
            .events
            .iter()
            .map(|e| {
                serde_json::from_value(serde_json::json!({
                    e.event_type.clone(): serde_json::from_slice::<serde_json::Value>(&e.data).unwrap()
                }))
                .unwrap()
            })
            .collect();
        assert_eq!(
            events.len(),
            20,
            "every seat of four courses of five is taken"
        );
        let mut pairs = std::collections::HashSet::new();
        for c in 0..4 {
            let n = events
                .iter()
                .filter(|e| matches!(e, CourseEvent::StudentSubscribed { course, .. } if *course == format!("c{c}")))
                .count();
            assert!(n <= 5, "c{c} has {n} students");
        }
        for s in 0..64 {
            let n = events
                .iter()
                .filter(|e| matches!(e, CourseEvent::StudentSubscribed { student, .. } if *student == format!("s{s}")))
                .count();
            assert!(n <= COURSES_PER_STUDENT, "s{s} takes {n} courses");
        }
        for e in &events {
            assert!(pairs.insert(format!("{e:?}")), "twice: {e:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn students_racing_for_seats_never_overfill_a_course_in_memory() {
        race(Arc::new(MemoryStore::new())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn students_racing_for_seats_never_overfill_a_course_on_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let store = factum::Engine::open(dir.path(), factum::EngineOptions::default()).unwrap();
        race(Arc::new(store.clone())).await;
        store.close().unwrap();
    }

    #[tokio::test]
    async fn the_walk_through_runs() {
        run(MemoryStore::new()).await.unwrap();
    }
}
