package pitwall;

import org.apache.flink.table.functions.AggregateFunction;

/** The value with the latest event time (pitwall's "last"), mergeable for sliding windows. */
public class Last extends AggregateFunction<Double, Last.Acc> {
    /** The latest time seen and its value. */
    public static class Acc {
        public long time = Long.MIN_VALUE;
        public Double value = null;
    }

    @Override
    public Acc createAccumulator() {
        return new Acc();
    }

    @Override
    public Double getValue(Acc acc) {
        return acc.value;
    }

    public void accumulate(Acc acc, Double value, Long time) {
        if (value != null && time != null && time >= acc.time) {
            acc.time = time;
            acc.value = value;
        }
    }

    public void merge(Acc acc, Iterable<Acc> others) {
        for (Acc o : others) {
            if (o.value != null && o.time >= acc.time) {
                acc.time = o.time;
                acc.value = o.value;
            }
        }
    }
}
