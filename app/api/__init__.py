from flask import Flask


def register_blueprints(app: Flask) -> None:
    from app.api import admin, dead_letters, health, metrics, orders

    app.register_blueprint(orders.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(dead_letters.bp)
    app.register_blueprint(metrics.bp)


__all__ = ["register_blueprints"]
