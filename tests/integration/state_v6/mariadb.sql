-- A state store as twoway made it before its schema migrations went through Alembic
-- (schema version 6): the DDL SQLAlchemy emitted for this database.

CREATE TABLE twoway_schema (
	version INTEGER NOT NULL,
	applied_at DATETIME NOT NULL,
	PRIMARY KEY (version)
);

CREATE TABLE id_map (
	sync VARCHAR(120) NOT NULL,
	`system` VARCHAR(120) NOT NULL,
	external_id VARCHAR(255) NOT NULL,
	link_id VARCHAR(36) NOT NULL,
	seen TEXT,
	seen_hash VARCHAR(32),
	version VARCHAR(255),
	deleted_at DATETIME,
	PRIMARY KEY (sync, `system`, external_id)
);

CREATE INDEX ix_id_map_link ON id_map (sync, link_id);

CREATE INDEX ix_id_map_live ON id_map (sync, `system`, deleted_at, external_id);

CREATE TABLE shadow (
	sync VARCHAR(120) NOT NULL,
	link_id VARCHAR(36) NOT NULL,
	base TEXT NOT NULL,
	match_key VARCHAR(32),
	deleted_at DATETIME,
	updated_at DATETIME NOT NULL,
	PRIMARY KEY (sync, link_id)
);

CREATE INDEX ix_shadow_match ON shadow (sync, match_key);

CREATE TABLE cursors (
	sync VARCHAR(120) NOT NULL,
	`system` VARCHAR(120) NOT NULL,
	scope VARCHAR(120) NOT NULL,
	`cursor` TEXT,
	updated_at DATETIME NOT NULL,
	PRIMARY KEY (sync, `system`, scope)
);

CREATE TABLE conflicts (
	id INTEGER NOT NULL AUTO_INCREMENT,
	sync VARCHAR(120) NOT NULL,
	link_id VARCHAR(36) NOT NULL,
	field VARCHAR(120) NOT NULL,
	status VARCHAR(16) NOT NULL,
	policy VARCHAR(120) NOT NULL,
	winner VARCHAR(120),
	candidates TEXT NOT NULL,
	chosen TEXT,
	run_id VARCHAR(36),
	detected_at DATETIME NOT NULL,
	resolved_at DATETIME,
	changed_at TEXT,
	decided_by VARCHAR(120),
	decided_at DATETIME,
	PRIMARY KEY (id)
);

CREATE INDEX ix_conflicts_open ON conflicts (sync, status, link_id);

CREATE TABLE dead_letters (
	id INTEGER NOT NULL AUTO_INCREMENT,
	sync VARCHAR(120) NOT NULL,
	`system` VARCHAR(120) NOT NULL,
	link_id VARCHAR(36),
	external_id VARCHAR(255),
	operation VARCHAR(16) NOT NULL,
	payload TEXT,
	error TEXT NOT NULL,
	kind VARCHAR(16) NOT NULL,
	attempts INTEGER NOT NULL,
	first_seen DATETIME NOT NULL,
	last_seen DATETIME NOT NULL,
	next_attempt_at DATETIME NOT NULL,
	resolved_at DATETIME,
	decision VARCHAR(16),
	decided_by VARCHAR(120),
	decided_at DATETIME,
	PRIMARY KEY (id)
);

CREATE INDEX ix_dead_letters_open ON dead_letters (sync, resolved_at);

CREATE TABLE runs (
	id VARCHAR(36) NOT NULL,
	sync VARCHAR(120) NOT NULL,
	started_at DATETIME NOT NULL,
	finished_at DATETIME,
	status VARCHAR(16) NOT NULL,
	dry_run BOOL NOT NULL,
	summary TEXT,
	error TEXT,
	PRIMARY KEY (id)
);

CREATE INDEX ix_runs_sync ON runs (sync, started_at);

CREATE TABLE leases (
	sync VARCHAR(120) NOT NULL,
	holder VARCHAR(64) NOT NULL,
	host VARCHAR(255) NOT NULL,
	pid INTEGER NOT NULL,
	acquired_at DATETIME NOT NULL,
	expires_at DATETIME NOT NULL,
	PRIMARY KEY (sync)
);

CREATE TABLE intents (
	sync VARCHAR(120) NOT NULL,
	`system` VARCHAR(120) NOT NULL,
	link_id VARCHAR(36) NOT NULL,
	run_id VARCHAR(36) NOT NULL,
	values_hash VARCHAR(32) NOT NULL,
	members TEXT NOT NULL,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (sync, `system`, link_id)
);
