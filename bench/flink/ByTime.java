package pitwall;

import org.apache.flink.table.functions.AggregateFunction;

/**
 * The value whose event time wins against every other's ({@link First}: the earliest,
 * {@link Last}: the latest), mergeable, as sliding windows need.
 */
public abstract class ByTime extends AggregateFunction<Double, ByTime.Acc> {
    /** The winning time so far and its value. */
    public static class Acc {
        public long time;
        public Double value = null;
    }

    /** Whether a value at {@code time} replaces the one held at {@code held}. */
    protected abstract boolean wins(long time, long held);

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    @Override
    public Double getValue(Acc acc) {
        return acc.value;
    }

    public void accumulate(Acc acc, Double value, Long time) {
        if (value != null && time != null && (acc.value == null || wins(time, acc.time))) {
            acc.time = time;
            acc.value = value;
        }
    }

    public void merge(Acc acc, Iterable<Acc> others) {
        for (Acc o : others) {
            if (o.value != null && (acc.value == null || wins(o.time, acc.time))) {
                acc.time = o.time;
                acc.value = o.value;
            }
        }
    }
}
