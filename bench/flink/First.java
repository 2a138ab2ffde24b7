package pitwall;

/** The value with the earliest event time (pitwall's "first"). */
public class First extends ByTime {
    @Override
    protected boolean wins(long time, long held) {
        return time < held;
    }
}
